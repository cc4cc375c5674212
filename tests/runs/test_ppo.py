"""PPO with a value model beside GRPO (algorithm=ppo; grpolab/training/ppo.py), end to end through the command line:
it trains, saves the value model in its checkpoints, resumes bitwise after a kill -9, runs on two processes (DDP)
and refuses in one line what it does not combine with."""

import json

import pytest
import torch
from safetensors.torch import load_file

from grpolab.config import load_config
from grpolab.errors import ConfigError
from tests.conftest import TINY, kill_at_checkpoint, run_cli

PPO = [*TINY, "algorithm=ppo", "rollout.group_size=1", "rollout.prompts_per_step=8", "grpo.beta=0.04"]
LONG = [*PPO, "train.max_steps=8", "train.save_every=2", "eval.n=4", "log.report=false"]
VALUE_KEYS = ("value_loss", "value_mean", "explained_variance", "value_clip_frac", "returns_mean", "advantages_std")
TIMING = ("step_seconds", "tokens_per_second")


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(run_dir):
    return [{k: v for k, v in m.items() if k not in TIMING and not k.startswith("time/")} for m in metrics(run_dir)]


def test_ppo_trains_and_logs_its_value_model(tmp_path):
    run_dir = tmp_path / "ppo"
    run_cli("train", *PPO, "train.save_every=2", f"output_dir={run_dir}", check=True)
    records = metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in VALUE_KEYS:
        assert any(key in r for r in records), key
    assert all(r["time/value"] > 0 and r["time/values"] > 0 for r in records)
    assert records[0]["value_mean"] == 0.0  # the head starts at zero (grpolab/model/value.py)
    assert records[-1]["value_mean"] != 0.0  # and has learned since
    checkpoint = run_dir / "checkpoints" / "step-2"
    value = load_file(str(checkpoint / "value.safetensors"))
    assert "head.weight" in value and any(name.startswith("decoder.") for name in value)
    assert (run_dir / "final" / "model.safetensors").is_file() and (run_dir / "eval.json").is_file()


def test_ppo_resumes_bitwise_after_kill_9(tmp_path):
    straight = tmp_path / "straight"
    run_cli("train", *LONG, f"output_dir={straight}", check=True)
    killed = tmp_path / "killed"
    kill_at_checkpoint(["train", *LONG, f"output_dir={killed}"], killed, 4)
    run_cli("train", "--resume", str(killed), check=True)
    assert comparable(killed) == comparable(straight)  # value losses and values included: the value model too
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (straight, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_on_two_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    args = [*PPO, "train.max_steps=2", "eval.n=4", "log.report=false", f"output_dir={run_dir}", "--quiet"]
    run_cli("train", *args, "--nproc", "2", check=True, timeout=900)
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]
    assert all("value_loss" in r for r in metrics(run_dir))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["grpo.algorithm=online_rft"], "grpo.algorithm: is now the top-level key algorithm"),
        (["algorithm=ppo", "lora.rank=4"], "LoRA is not supported"),
        (["algorithm=ppo", "parallel.strategy=fsdp"], "'fsdp' is not supported with algorithm=ppo"),
        (["algorithm=ppo", "grpo.mu=2"], "grpo.mu: has no meaning with algorithm=ppo"),
        (["algorithm=ppo", "grpo.advantage=rloo"], "grpo.advantage: has no meaning"),
        (["rollout.group_size=1"], "expected an integer >= 2 (grpo normalises within a group; algorithm=ppo takes 1)"),
        (["algorithm=ppo", "ppo.lam=1.5"], "ppo.lam: got 1.5, expected a float in [0, 1]"),
    ],
)
def test_what_ppo_does_not_combine_with_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_ppo_key_on_the_command_line_touches_nothing(tmp_path):
    result = run_cli("train", *PPO, "ppo.epochs=0", f"output_dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "ppo.epochs: got 0" in result.stderr
    assert not (tmp_path / "r").exists()


def test_bench_ppo_prints_the_comparison(tmp_path):
    result = run_cli(
        "bench", "ppo", "model=tiny-random", "rollout.max_new_tokens=8", "eval.n=2", "eval.max_new_tokens=4",
        "--steps", "2", "--curve", check=True,
    )  # fmt: skip
    record = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("grpo_peak_rss_gb", "ppo_peak_rss_gb", "memory_ratio", "grpo_step_seconds", "ppo_step_seconds"):
        assert record[key] > 0, key
    assert record["completions_per_step"] == 32 and record["ppo_group_size"] == 1
    assert {"value", "values"} <= set(record["ppo_phase_seconds"]) and "value" not in record["grpo_phase_seconds"]
    parts = {"weights", "gradients", "optimizer", "value_model", "reference", "engine_copy", "activations_and_rest"}
    assert set(record["ppo_state_gb"]) == parts == set(record["grpo_state_gb"])
    assert len(record["ppo_train_accuracy"][0]) == 2 and record["grpo_accuracy_after"][0] is not None
