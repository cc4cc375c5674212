"""`grpolab train` end to end on tiny-random through the CLI, and its one-line errors."""

import json

import yaml

from tests.conftest import TINY, run_cli


def test_run_folder_is_complete(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["model"] == "tiny-random" and config["rollout"]["group_size"] == 4
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for key in ["reward_mean", "reward_std", "kl", "loss", "completion_len_mean", "step_seconds", "tokens_per_second"]:
        assert all(isinstance(m[key], float) for m in lines), key
    results = json.loads((tiny_run / "eval.json").read_text())
    assert results["n"] == 8
    assert 0.0 <= results["before"]["accuracy"] <= 1.0 and 0.0 <= results["after"]["accuracy"] <= 1.0


def test_final_folder_loads_with_transformers(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_run / "final")
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "final")
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template


def test_training_changes_the_weights(tiny_run):
    import torch
    from transformers import AutoModelForCausalLM

    from grpolab.model.loading import resolve_model_path

    before = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random")).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tiny_run / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_refuses_existing_run_folder(tiny_run):
    before = (tiny_run / "metrics.jsonl").read_text()
    result = run_cli("train", *TINY, f"output_dir={tiny_run}")
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tiny_run / "metrics.jsonl").read_text() == before


def test_bad_key_is_one_line_and_nonzero():
    result = run_cli("train", "rollout.groupsize=4")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("grpolab train: error: unknown config key 'rollout.groupsize' (allowed here: ")
    assert "group_size" in line and "generation_batch" in line


def test_missing_model_path_is_one_line(tmp_path):
    result = run_cli("train", f"model={tmp_path}/nope", f"output_dir={tmp_path}/run")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_help_lists_keys():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    assert "rollout.group_size = 8" in result.stdout and "grpo.beta" in result.stdout


def test_time_budget_stops_training_and_still_evaluates(tmp_path):
    run_dir = tmp_path / "budget"
    run_cli("train", *TINY, "train.max_steps=50", "train.max_minutes=0.0001", f"output_dir={run_dir}", check=True)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
    assert "after" in json.loads((run_dir / "eval.json").read_text())
    assert (run_dir / "final" / "config.json").exists()


def test_prompt_beyond_the_context_is_one_line(tmp_path):
    # tiny-random has a 1024-token context
    result = run_cli("train", *TINY, "eval.max_new_tokens=1100", f"output_dir={tmp_path}/run")
    assert result.returncode == 2
    assert "exceeds the model's context of 1024 tokens" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_key_value_pairs_on_both_sides_of_a_flag(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "model=tiny-random",
        "--quiet",
        "train.max_steps=0",
        "eval.n=0",
        f"output_dir={run_dir}",
        "log.report=false",
    ]
    done = run_cli("train", *args)
    assert done.returncode == 0, done.stderr
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 0 and saved["model"] == "tiny-random"
    refused = run_cli("train", "model=tiny-random", "--quiet", "--frobnicate", "eval.n=0")
    assert refused.returncode == 2 and "unrecognized arguments: --frobnicate" in refused.stderr
