"""A run killed at any moment resumes with nothing lost (issue: reliability)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from grpolab.config import load_config
from grpolab.errors import TrainingError
from grpolab.runs.checkpoint import latest_checkpoint, list_checkpoints
from grpolab.runs.folder import check_finite
from tests.conftest import ROOT, TINY, run_cli

LONG = [*TINY, "train.max_steps=30", "train.save_every=4", "train.keep_checkpoints=2", "eval.n=4"]
TIMING = ("step_seconds", "tokens_per_second")


def comparable(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMING and not k.startswith("time/")} for m in lines]


def start(run_dir):
    args = [sys.executable, "-m", "grpolab", "train", *LONG, f"output_dir={run_dir}"]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before the test could interrupt it"
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume") / "straight"
    run_cli("train", *LONG, f"output_dir={run_dir}", check=True)
    return run_dir


def test_sigkill_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    process = start(run_dir)
    wait_for(lambda: (run_dir / "checkpoints" / "step-8").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "final").exists()
    run_cli("train", "--resume", str(run_dir), check=True)
    assert comparable(run_dir) == comparable(uninterrupted)  # every step exactly once, same values
    straight = load_file(str(uninterrupted / "final" / "model.safetensors"))
    resumed = load_file(str(run_dir / "final" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # bitwise on CPU
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads((uninterrupted / "eval.json").read_text())
    assert len(list_checkpoints(run_dir)) <= 2


def test_sigterm_saves_and_exits_zero(tmp_path):
    run_dir = tmp_path / "term"
    process = start(run_dir)
    wait_for(lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text(), process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    assert f"grpolab train --resume {run_dir}" in out
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == int(checkpoint.name.split("-")[1])


def test_half_written_checkpoints_are_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-4").mkdir(parents=True)
    (root / "step-4" / "trainer_state.json").write_text("{}")
    (root / ".step-8.tmp123").mkdir()  # crash while saving: the temporary name
    (root / "step-12").mkdir()  # no trainer_state.json: not complete
    assert latest_checkpoint(tmp_path) == root / "step-4"


def test_resume_without_a_run_is_one_line(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "holds no run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nonfinite_updates_stop_after_the_limit():
    config = load_config(None, ["train.max_nonfinite_steps=2"])
    state = {"nonfinite_in_a_row": 0}
    check_finite({"step": 1, "skipped_updates": 1}, state, config)
    check_finite({"step": 2, "skipped_updates": 0}, state, config)  # a good step resets the count
    check_finite({"step": 3, "skipped_updates": 1}, state, config)
    with pytest.raises(TrainingError, match="non-finite loss or gradients in 2 steps in a row"):
        check_finite({"step": 4, "skipped_updates": 1}, state, config)
