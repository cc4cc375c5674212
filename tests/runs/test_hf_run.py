"""`grpolab train task=hf:FILE` end to end on tiny-random through the CLI: a local parquet file read by the
`datasets` library trains and evaluates like any other task."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_cli

pytest.importorskip("datasets")
parquet = pytest.importorskip("pyarrow.parquet")

TINY = [arg for arg in TINY if not arg.startswith("reward.weights.format")]  # arithmetic's reward only


def test_a_run_on_a_local_parquet_file_finishes_and_evaluates(tmp_path):
    import pyarrow

    rows = [{"prompt": f"What is {i} + {i}?", "target": str(2 * i)} for i in range(30)]
    path = tmp_path / "rows.parquet"
    parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    run = tmp_path / "run"
    task = f"task=hf:{path},question=prompt,answer=target"
    args = [*TINY, task, "train.max_steps=2", "eval.n=2", "log.report=false", "--quiet"]
    env = {"HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    result = run_cli("train", *args, f"output_dir={run}", env=env, timeout=400)
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    results = json.loads((run / "eval.json").read_text())
    assert results["n"] == 2 and 0.0 <= results["after"]["accuracy"] <= 1.0


def test_a_missing_field_stops_the_run_in_one_line(tmp_path):
    import pyarrow

    path = tmp_path / "rows.parquet"
    parquet.write_table(pyarrow.Table.from_pylist([{"question": "What is 1 + 1?", "answer": "2"}] * 10), path)
    env = {"HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    result = run_cli("train", *TINY, f"task=hf:{path},answer=target", f"output_dir={tmp_path / 'run'}", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # datasets' own logs and progress bars stay quiet
    assert line.endswith("rows.parquet split train: missing field(s) target (columns: question, answer)")
