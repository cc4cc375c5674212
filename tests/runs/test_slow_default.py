"""The real default (SmolLM2-135M-Instruct on arithmetic) for a few steps. Slow: run with `pytest -m slow`."""

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_default_model_trains_a_few_steps(tmp_path):
    run_dir = tmp_path / "default"
    result = run_cli("train", "train.max_steps=2", "eval.n=8", f"output_dir={run_dir}", timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["completion_len_mean"] > 0 for r in records)
    results = json.loads((run_dir / "eval.json").read_text())
    assert results["n"] == 8 and "before" in results and "after" in results
    assert (run_dir / "final" / "model.safetensors").exists()
