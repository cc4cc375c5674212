"""`grpolab train rollout.dtype=int8` end to end on tiny-random: the engine samples from int8 weights, the trainer
scores exactly, and the mismatch between the two is logged (and corrected by grpo.rollout_correction)."""

from __future__ import annotations

import json
import math

import pytest

from grpolab.config import load_config
from grpolab.errors import ConfigError
from tests.conftest import run_cli
from tests.runs.test_random_run import QUICK


def test_a_run_with_int8_rollouts_trains_and_logs_the_mismatch(tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in QUICK if not o.startswith("train.max_steps")] + ["train.max_steps=2"]
    result = run_cli("train", "model=tiny-random", "rollout.dtype=int8", *overrides, f"output_dir={run}", timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["loss"]) and 0 < row["logprob_mismatch"] < 0.05


def test_int8_with_shared_weights_is_refused_in_one_line(tmp_path):
    result = run_cli("train", "model=tiny-random", "rollout.dtype=int8", "rollout.share_weights=true",
                     f"output_dir={tmp_path / 'run'}", timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "rollout.share_weights" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_int8_refuses_the_hf_engine_and_lora_at_config_time():
    for extra in (["rollout.engine=hf"], ["lora.rank=4"]):
        with pytest.raises(ConfigError, match="rollout.dtype=int8"):
            load_config(None, ["rollout.dtype=int8", *extra])
