"""Golden losses: each shipped preset, on tiny-random with a fixed seed, gives the per-step losses recorded in
`tests/golden/presets.json` (within a small tolerance). A preset that ignored one of its knobs, or a change that
moved the arithmetic of a step, shows up here. fp32 everywhere, so the numbers do not depend on the CPU's bf16.

Re-record (only after a change that is meant to move the numbers, saying why in its commit):
    GRPOLAB_RECORD_GOLDEN=1 pytest tests/runs/test_golden_losses.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grpolab.config import load_config
from tests.conftest import PRESETS, ROOT

GOLDEN = Path(__file__).parent / "golden" / "presets.json"
SMALL = [
    "model=tiny-random",
    "train.max_steps=3",
    "train.max_minutes=0",
    "train.precision=fp32",
    "rollout.dtype=fp32",
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "reward.num_workers=0",
    "reward.weights.length_penalty=1.0",  # random text is never correct: a reward that differs within a group
    "eval.n=0",
    "log.report=false",
    "log.tensorboard=false",
    "log.samples_every=0",
    "log.quiet=true",
]
KEYS = ("loss", "kl", "reward_mean", "grad_norm", "clip_high_frac")


def preset_record(name: str, run_dir: Path) -> list[dict]:
    from grpolab.training.trainer import train

    config = load_config(str(ROOT / "grpolab" / "configs" / f"{name}.yaml"), [*SMALL, f"output_dir={run_dir}"])
    train(config, log=lambda *args: None)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{key: json.loads(line)[key] for key in KEYS} for line in lines]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_losses_match_the_recorded_ones(name, tmp_path):
    records = preset_record(name, tmp_path / name)
    if os.environ.get("GRPOLAB_RECORD_GOLDEN") == "1":
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = records
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {name}")
    expected = json.loads(GOLDEN.read_text())[name]
    assert len(records) == len(expected) == 3
    for step, (got, want) in enumerate(zip(records, expected), 1):
        for key in KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (name, step, key)


def test_presets_differ_from_each_other():
    """Knobs that are ignored would make two presets' numbers equal."""
    golden = json.loads(GOLDEN.read_text())
    numbers = {name: tuple((round(r["loss"], 5), round(r["grad_norm"], 4)) for r in golden[name]) for name in PRESETS}
    assert len(set(numbers.values())) == len(PRESETS)
