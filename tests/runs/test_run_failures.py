"""A run that fails while reward workers are alive ends (one line, non-zero) instead of hanging, and reward
calls that `reward.on_error=zero` scores 0 are counted in metrics.jsonl and said on the terminal."""

from __future__ import annotations

import json

from tests.conftest import TINY, run_cli

TINY = [arg for arg in TINY if not arg.startswith("reward.weights.format")]  # arithmetic's reward only


def jsonl_task(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(30)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"task=jsonl:{path}"


def test_a_failed_run_with_live_reward_workers_exits(tmp_path):
    args = [*TINY, jsonl_task(tmp_path), "eval.n=2", "train.max_steps=10", "train.max_nonfinite_steps=1"]
    result = run_cli("train", *args, "train.learning_rate=1e300", f"output_dir={tmp_path / 'run'}", timeout=400)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0]


def test_reward_errors_under_on_error_zero_are_counted_and_said(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, jsonl_task(tmp_path), "eval.n=2", "train.max_steps=1", "log.report=false", "--quiet"]
    result = run_cli("train", *args, "reward.on_error=zero", "reward.timeout_seconds=0.000001", f"output_dir={run}")
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["reward_errors"] > 0
    assert "reward call(s) failed and scored 0" in result.stderr and "correctness" in result.stderr


def long_rows(tmp_path, long_at: int, size: int = 50_000_000):
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(30)]
    rows[long_at]["question"] = "x" * size
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"task=jsonl:{path}"


def test_an_overlong_training_row_is_skipped_when_the_data_loads(tmp_path):
    args = [*TINY, long_rows(tmp_path, long_at=1), "eval.n=2", "train.max_steps=2", "log.report=false"]
    result = run_cli("train", *args, f"output_dir={tmp_path / 'run'}", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 training row(s)" in result.stdout and "(first: row 0)" in result.stdout


def test_an_overlong_held_out_row_refuses_the_run_up_front(tmp_path):
    args = [*TINY, long_rows(tmp_path, long_at=0, size=5000), "eval.n=2", "train.max_steps=2"]
    result = run_cli("train", *args, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "held-out row 0" in lines[0] and "context" in lines[0]
