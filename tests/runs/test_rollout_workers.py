"""Rollout workers apart from the trainer (`rollout.workers`, grpolab/rollout/workers.py): at max_staleness 0 the
run is the synchronous one, bit for bit; off-policy runs keep their staleness bound; a killed worker stops the
run with a checkpoint it resumes from; Ctrl-C stops trainer and workers; nothing is left running."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY, run_cli

# one thread on both sides: the same matmul kernels, so the same bits
SAME_THREADS = [*TINY, "train.threads=1", "rollout.worker_threads=1", "log.report=false"]
VARYING = ("time/", "async/", "step_seconds", "tokens_per_second")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rollout_workers(pid: int) -> list[int]:
    """The trainer's rollout workers: its children started by multiprocessing's spawn."""
    workers = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue
    return workers


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "grpolab", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group: Ctrl-C is sent to the group, as a terminal does
    )


def wait_for_steps(run_dir: Path, steps: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError(f"{steps} steps not logged within {timeout} s")


@pytest.mark.parametrize(
    "variant",
    [[], ["algorithm=ppo"], ["lora.rank=4", "lora.target_modules=q_proj,v_proj"]],
    ids=["grpo", "ppo", "lora"],
)
def test_one_worker_at_staleness_0_is_the_synchronous_run(tmp_path, variant):
    sync, workers = tmp_path / "sync", tmp_path / "workers"
    run_cli("train", *SAME_THREADS, *variant, f"output_dir={sync}", check=True)
    run_cli("train", *SAME_THREADS, *variant, "rollout.workers=1", "rollout.max_staleness=0",
            f"output_dir={workers}", check=True)  # fmt: skip
    for a, b in zip(metrics(sync), metrics(workers), strict=True):
        assert {k: v for k, v in a.items() if not k.startswith(VARYING)} == {
            k: v for k, v in b.items() if not k.startswith(VARYING)
        }
        assert b["async/staleness"] == 0 and b["async/version"] == a["step"] - 1
    final_sync, final_workers = (
        load_file(sync / "final" / "model.safetensors"),
        load_file(workers / "final" / "model.safetensors"),
    )
    assert all((final_sync[name] == final_workers[name]).all() for name in final_sync)
    assert json.loads((sync / "eval.json").read_text()) == json.loads((workers / "eval.json").read_text())


def test_two_workers_one_step_off_policy_keep_the_bound(tmp_path):
    run_dir = tmp_path / "off"
    result = run_cli(
        "train", *TINY, "train.max_steps=5", "rollout.workers=2", "rollout.max_staleness=1",
        "grpo.rollout_correction=token_mask", "log.report=false", f"output_dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(0 <= r["async/staleness"] <= 1 for r in records)
    assert records[0]["async/staleness"] == 0  # the first step has only the initial weights
    assert all("time/wait_rollout" in r and "rollout_weight_masked_frac" in r for r in records)
    assert (run_dir / "final" / "model.safetensors").exists()


def interrupted_run(run_dir: Path, interrupt, *overrides: str) -> tuple[subprocess.Popen, str, str, list[int]]:
    """A long run with one rollout worker, `interrupt(process, worker pids)` once two steps are logged; returns the
    finished process, its output and the pids of the worker and its children (the reward runner's processes)."""
    process = start("train", *TINY, "train.max_steps=200", "rollout.workers=1", "log.report=false",
                    "eval.before=false", *overrides, f"output_dir={run_dir}")  # fmt: skip
    try:
        wait_for_steps(run_dir, 2, process)
        workers = rollout_workers(process.pid)
        assert len(workers) == 1
        pids = workers + [pid for worker in workers for pid in children(worker)]
        interrupt(process, workers)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process, stdout, stderr, pids


def test_a_killed_worker_stops_the_run_with_a_checkpoint_that_resumes(tmp_path):
    run_dir = tmp_path / "killed"
    kill = lambda process, workers: os.kill(workers[0], signal.SIGKILL)
    process, _, stderr, pids = interrupted_run(run_dir, kill, "train.save_every=0")
    assert process.returncode != 0
    line = stderr.strip().splitlines()[-1]
    assert "rollout worker 1 died" in line and "saved" in line and "--resume" in line, stderr
    saved = int(line.split("; step ")[1].split()[0])
    assert (run_dir / "checkpoints" / f"step-{saved}").is_dir()
    assert len(metrics(run_dir)) == saved
    time.sleep(1)
    assert not [pid for pid in pids if alive(pid)]
    resumed = run_cli("train", "--resume", str(run_dir), f"train.max_steps={saved + 2}", "rollout.workers=1")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, saved + 3))


def test_ctrl_c_stops_trainer_and_workers_and_leaves_nothing_running(tmp_path):
    run_dir = tmp_path / "interrupted"
    ctrl_c = lambda process, workers: os.killpg(process.pid, signal.SIGINT)  # a terminal sends it to the group
    process, stdout, stderr, pids = interrupted_run(run_dir, ctrl_c, "rollout.max_staleness=1")
    assert process.returncode == 0, stderr
    assert "checkpoint saved" in stdout + stderr
    time.sleep(1)
    assert not [pid for pid in pids if alive(pid)]
    steps = len(metrics(run_dir))
    assert (run_dir / "checkpoints" / f"step-{steps}").is_dir()


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.dynamic_sampling=true", "grpo.dynamic_sampling: not with rollout.workers"),
        ("rollout.worker_threads=0", "rollout.worker_threads: got 0, expected an integer >= 1"),
    ],
)
def test_what_workers_refuse_is_one_line(tmp_path, override, message):
    result = run_cli("train", *TINY, "rollout.workers=1", override, f"output_dir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()


def test_staleness_needs_workers(tmp_path):
    result = run_cli("train", *TINY, "rollout.max_staleness=1", f"output_dir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert "rollout.max_staleness: needs rollout.workers >= 1" in result.stderr


def test_bench_async_prints_a_line_per_run_and_a_summary(tmp_path):
    result = run_cli(
        "bench", "async", *TINY, "--minutes", "0.03", "--seeds", "0", "--staleness", "0,1",
        "--output", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("setting") for line in lines[:-1]] == ["sync", "workers1_k0", "workers1_k1"]
    summary = lines[-1]["summary"]
    for name in ("sync", "workers1_k0", "workers1_k1"):
        assert summary[name]["steps_per_hour"] > 0
        assert 0 <= summary[name]["trainer_idle_frac"] < 1
    assert set(summary["workers1_k1"]["staleness"]) <= {"0", "1"}
    assert summary["sync"]["staleness"] == {}


def test_bench_async_settings_name_the_thread_split():
    from argparse import Namespace

    from grpolab.bench.async_rollouts import settings

    args = Namespace(threads=0, staleness="1", workers=1, trainer_threads=2, worker_threads=1)
    assert settings(args) == {
        "workers1_k1_t2w1": [
            "train.threads=2", "rollout.worker_threads=1", "rollout.workers=1", "rollout.max_staleness=1",
        ]
    }  # fmt: skip
    args = Namespace(threads=2, staleness="0", workers=1, trainer_threads=1, worker_threads=1)
    assert list(settings(args)) == ["sync", "workers1_k0"]
