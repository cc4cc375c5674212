"""`grpolab train model=random:<config.json>:tiny-random` end to end through the CLI: a randomly initialised
Qwen2 built from a config file trains, evaluates and saves a final/ that loads back; a bad config is one line."""

from __future__ import annotations

import json

from tests.conftest import TINY_QWEN2, run_cli

QUICK = [
    "task=arithmetic",
    "train.max_steps=1",
    "train.max_minutes=0",
    "rollout.prompts_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=8",
    "eval.n=2",
    "eval.max_new_tokens=8",
    "log.report=false",
    "--quiet",
]


def test_a_random_qwen2_from_a_config_file_trains_and_saves_its_final_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    config = tmp_path / "qwen2" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY_QWEN2))
    run = tmp_path / "run"
    env = {"GRPOLAB_CACHE": str(tmp_path / "cache")}
    result = run_cli("train", f"model=random:{config}:tiny-random", *QUICK, f"output_dir={run}", env=env, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    results = json.loads((run / "eval.json").read_text())
    assert results["n"] == 2 and 0.0 <= results["after"]["accuracy"] <= 1.0
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    assert type(final).__name__ == "Qwen2ForCausalLM" and final.config.vocab_size == 128
    assert [path.name for path in (tmp_path / "cache" / "models").glob("transformers-*/random-*")]  # cached once


def test_a_config_without_model_type_stops_the_run_in_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hidden_size": 32}))
    env = {"GRPOLAB_CACHE": str(tmp_path / "cache")}
    result = run_cli("train", f"model=random:{config}", *QUICK, f"output_dir={tmp_path / 'run'}", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "has no model_type" in line
