"""`grpolab bench step` on tiny-random: the harness runs each side in its own process and prints one JSON
line of medians; the TRL side runs only where trl is importable."""

import importlib.util
import json
import sys

import pytest

from grpolab.bench import step
from grpolab.errors import ConfigError
from tests.conftest import ROOT

TINY = [
    "model=tiny-random",
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=4",
    "train.micro_batch_size=4",
]


def options(**changes):
    args = dict(vs="none", trl_python=sys.executable, warmup=0, steps=1, threads=1, all_prompts=False, floor=False)
    return type("Args", (), {**args, "curve": True, "trl_option": [], **changes})()


def test_grpolab_side_prints_one_json_line(capsys):
    assert step.run(TINY, options(steps=2)) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(record["grpolab_all_step_seconds"]) == 2
    assert record["grpolab_step_seconds"] > 0 and record["grpolab_peak_rss_gb"] > 0
    assert {"generate", "rewards", "reference", "policy", "optimizer"} <= set(record["grpolab_phase_seconds"])
    assert len(record["grpolab_rewards"]) == 2
    assert "speedup" not in record and "grpolab_matmul_floor_seconds" not in record


def test_floor_counts_every_phase_products_and_stays_below_the_step(capsys):
    assert step.run(TINY, options(floor=True)) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    phases = record["grpolab_matmul_floor_by_phase"]
    assert {"generate", "reference", "policy"} <= set(phases) and all(v > 0 for v in phases.values())
    assert record["grpolab_matmul_floor_seconds"] == pytest.approx(sum(phases.values()), abs=0.002)
    assert 0 < record["grpolab_matmul_share"] < 1 and record["grpolab_matmul_tflop"] > 0
    assert len(record["grpolab_all_step_seconds"]) == 1  # the recorded step is not timed


def test_bad_override_and_missing_trl_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="rollout.group_size"):
        step.run(["rollout.group_size=zero"], options())
    no_trl = tmp_path / "python"
    no_trl.write_text("#!/bin/sh\nexit 1\n")
    no_trl.chmod(0o755)
    with pytest.raises(ConfigError, match="trl is not importable"):
        step.run(TINY, options(vs="trl", trl_python=str(no_trl)))


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install -e '.[bench]')")
def test_both_sides_on_tiny_random(capsys):
    assert step.run(TINY, options(vs="trl")) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ratio = record["trl_step_seconds"] / record["grpolab_step_seconds"]
    assert record["speedup"] == pytest.approx(ratio, abs=0.005)  # printed with 2 decimals
    assert record["trl_peak_rss_gb"] > 0 and len(record["trl_rewards"]) == 1


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install -e '.[bench]')")
def test_floor_on_both_sides(capsys):
    assert step.run(TINY, options(vs="trl", floor=True)) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(record["trl_all_step_seconds"]) == 1 and record["trl_matmul_floor_seconds"] > 0
    expected = record["trl_step_seconds"] / record["grpolab_matmul_floor_seconds"]
    assert record["speedup_at_grpolab_floor"] == pytest.approx(expected, rel=0.05)


def test_learning_verdict_takes_its_noise_from_the_seeds():
    spec = importlib.util.spec_from_file_location("learning_vs_trl", ROOT / "benchmarks" / "learning_vs_trl.py")
    learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learning)
    runs = [  # per-seed mean differences -0.1 and +0.1: no difference beyond the seeds' spread
        {"grpolab_rewards": [0.0, 0.2], "trl_rewards": [0.1, 0.3]},
        {"grpolab_rewards": [0.4, 0.4], "trl_rewards": [0.3, 0.3]},
    ]
    result = learning.verdict(runs)
    assert result["seed_differences"] == [-0.1, 0.1] and result["noise_from"] == "seeds"
    assert result["mean_difference"] == pytest.approx(0.0, abs=1e-9)
    assert result["standard_error"] == pytest.approx(0.1)  # stdev 0.1414 / sqrt(2)
    assert result["not_below_beyond_noise"] and result["t"] == 12.71  # two seeds: one degree of freedom
    below = [{"grpolab_rewards": [0.5 - d], "trl_rewards": [0.5]} for d in (0.10, 0.12, 0.08, 0.10)]
    result = learning.verdict(below)  # mean -0.10, standard error 0.008, t = 3.18 for 3 degrees of freedom
    assert result["t"] == 3.18 and not result["not_below_beyond_noise"]
    one = learning.verdict(runs[:1])  # one seed: the per-step spread, which is 0 here, flags any gap
    assert one["noise_from"].startswith("steps") and not one["not_below_beyond_noise"]
