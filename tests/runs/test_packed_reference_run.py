"""`grpolab train` with the reference on the packed forward against the transformers reference, end to end on
tiny-random in fp32: the same run, step for step (the KL, the loss), and no frozen transformers copy held."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.runs.test_random_run import QUICK


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_packed_reference_trains_as_the_transformers_one(tmp_path):
    overrides = [o for o in QUICK if not o.startswith("train.max_steps")] + [
        "train.max_steps=2", "train.precision=fp32", "rollout.dtype=fp32", "grpo.beta=0.1",
    ]  # fmt: skip
    runs = {}
    for choice in ("packed", "transformers"):
        runs[choice] = tmp_path / choice
        result = run_cli("train", "model=tiny-random", f"train.reference_forward={choice}", *overrides,
                         f"output_dir={runs[choice]}", timeout=500)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    packed, transformers = metrics(runs["packed"]), metrics(runs["transformers"])
    assert [row["step"] for row in packed] == [1, 2]
    assert transformers[1]["kl"] > 0  # the policy has moved from the reference by step 2
    for ours, theirs in zip(packed, transformers):
        assert ours["kl"] == pytest.approx(theirs["kl"], rel=1e-4, abs=1e-7)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-7)


def test_a_packed_reference_with_resets_is_refused_in_one_line(tmp_path):
    result = run_cli("train", "model=tiny-random", "train.reference_forward=packed", "grpo.ref_reset_every=2", *QUICK,
                     f"output_dir={tmp_path / 'run'}", timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "train.reference_forward" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
