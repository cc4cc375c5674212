"""`grpolab plan` and `train.memory_limit_gb` (grpolab/training/plan.py) on tiny-random: the plan's predicted peak
against the peak of a real run of the same config, the per-phase table, and the refusal before the run folder."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, run_cli

CONFIG = [*TINY, "train.max_steps=2", "log.report=false", "eval.n=2"]
PEAK_OF_A_RUN = (
    "import sys; from grpolab.cli import main; rc = main(sys.argv[1:]); "
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], file=sys.stderr); "
    "sys.exit(rc)"
)


@pytest.fixture(scope="module")
def plan():
    done = run_cli("plan", *CONFIG, "--json", check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plan_measures_every_phase_and_the_state(plan):
    assert {"generate", "reference", "policy", "optimizer"} <= set(plan["phases"])
    assert all(phase["peak_gb"] > 0 for phase in plan["phases"].values())
    assert plan["new_tokens"] == 16 and plan["completions_per_step"] == 8 and len(plan["step_seconds"]) == 2
    state = plan["state_gb"]
    assert state["optimizer"] == pytest.approx(2 * state["weights"], rel=0.01)  # two fp32 moments
    assert state["gradients"] == pytest.approx(state["weights"], rel=0.01)
    assert plan["peak_gb"] >= plan["after_setup_gb"] > plan["baseline_gb"] > 0


def test_predicted_peak_is_within_10_percent_of_a_real_run(plan, tmp_path):
    args = [sys.executable, "-c", PEAK_OF_A_RUN, "train", *CONFIG, f"output_dir={tmp_path / 'run'}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = int(done.stderr.strip().splitlines()[-1]) * 1024 / 1e9
    assert abs(plan["peak_gb"] - measured) <= 0.10 * measured, (plan["peak_gb"], measured)


def test_a_limit_too_small_is_refused_before_the_run_folder(tmp_path):
    run_dir = tmp_path / "refused"
    result = run_cli("train", *CONFIG, "train.memory_limit_gb=0.05", f"output_dir={run_dir}")
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert "train.memory_limit_gb: the worst-case step peaks at" in line and "try" in line
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_plan_names_what_to_try_when_it_does_not_fit():
    result = run_cli("plan", *CONFIG, "train.memory_limit_gb=0.05")
    assert result.returncode == 1
    assert "does NOT fit" in result.stdout and "train.optimizer=adamw_8bit" in result.stdout
    assert "phase" in result.stdout and "state GB: weights" in result.stdout


def test_a_limit_that_fits_lets_the_run_go(tmp_path):
    run_dir = tmp_path / "fits"
    result = run_cli("train", *CONFIG, "train.memory_limit_gb=64", f"output_dir={run_dir}", check=True)
    assert "within 64.00 GB" in result.stdout + result.stderr
    assert (run_dir / "final").is_dir()
