"""Many processes (issue 10): torchrun on CPU with gloo over loopback, tiny-random. The DDP run is two torchrun
"nodes" on 127.0.0.1 meeting through a c10d rendezvous; the FSDP runs go through `grpolab train --nproc 2`.

The comparisons run in fp32 (`train.precision=fp32`, `rollout.dtype=fp32`) so that the only differences are the
order of floating point sums: 2 processes x 2 prompts must give what 1 process gives with 4 prompts sampled 2 per
engine call (`rollout.generation_batch=2`, the same seeds) and micro-batches of the same rows. Measured here: DDP is
bitwise equal; FSDP differs by at most ~3e-8 in the gradient norm (reduce-scatter sums in another order).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpolab.config import load_config
from grpolab.errors import ConfigError
from grpolab.parallel.distributed import Parallel, check_world
from grpolab.rollout.sampling import call_seed
from grpolab.training.trainer import train
from tests.conftest import ROOT, run_cli

SETTINGS = [
    "model=tiny-random",
    "train.max_steps=6",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=16",
    "eval.n=6",
    "eval.max_new_tokens=8",
    "reward.weights.format=1.0",  # random text sometimes ends in a digit: a non-zero signal
    "train.precision=fp32",
    "rollout.dtype=fp32",  # the engine too: the rollout correction weighs by engine / trainer rounding differences
    "train.micro_batch_size=8",  # two prompts' rows: the same micro-batches on 1 and on 2 processes
    "train.learning_rate=1e-3",  # weights that move visibly in 6 steps
    "train.save_every=2",
    "grpo.ref_reset_every=2",  # a reset reference must be saved and restored too
    "log.report=false",
    "log.tensorboard=false",
]
COMPARED = ("loss", "grad_norm", "kl", "entropy", "reward_mean", "completion_len_mean", "clip_low_frac")
# Absolute, on the compared metrics and on every final weight. Micro-batches are grouped by completion length
# over the rows a process holds (grpolab/rollout.py), so one process and two put different rows together and fp32
# sums are reassociated: differences of ~1.1e-6 were observed (bitwise before length grouping).
TOLERANCE = 1e-5


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_run(a: Path, b: Path, tolerance: float = TOLERANCE) -> None:
    ma, mb = metrics(a), metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == list(range(1, len(ma) + 1))
    for x, y in zip(ma, mb):
        for key in COMPARED:
            assert abs(x[key] - y[key]) <= tolerance, (x["step"], key, x[key], y[key])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= tolerance
    assert (a / "eval.json").read_text() == (b / "eval.json").read_text()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    train(load_config(None, [*SETTINGS, "rollout.generation_batch=2", f"output_dir={run_dir}", "log.quiet=true"]))
    return run_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(settings: list[str]) -> None:
    """Two torchrun launchers (two 'machines', one process each) meet through a c10d rendezvous on 127.0.0.1."""
    endpoint = f"--rdzv-endpoint=127.0.0.1:{free_port()}"
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}"]
            + ["--rdzv-backend=c10d", endpoint, "--rdzv-id=test", "-m", "grpolab", "train", *settings],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """strategy -> the folder of an uninterrupted 2-process run (made on first use). DDP runs as two torchrun
    "nodes" on loopback, FSDP through `grpolab train --nproc 2`: both launches are covered, each once."""
    made = {}

    def run(strategy: str) -> Path:
        if strategy not in made:
            run_dir = tmp_path_factory.mktemp(strategy) / "run"
            args = [*SETTINGS, f"parallel.strategy={strategy}", f"output_dir={run_dir}", "--quiet"]
            if strategy == "ddp":
                two_nodes(args)
            else:
                run_cli("train", *args, "--nproc", "2", check=True)
            made[strategy] = run_dir
        return made[strategy]

    return run


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_as_one(strategy, one_process, two_processes):
    run_dir = two_processes(strategy)
    assert_same_run(one_process, run_dir)
    assert metrics(run_dir)[3]["kl"] > 0  # the reference reset after step 2 is no longer the policy at step 4
    assert not list(run_dir.glob("**/*.tmp*")) and (run_dir / "final" / "config.json").exists()
    checkpoint = run_dir / "checkpoints" / "step-4"
    assert (checkpoint / "sharded").is_dir() == (strategy == "fsdp")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_killed_two_process_run_resumes(two_processes, tmp_path):
    run_dir = tmp_path / "killed"
    args = [*SETTINGS, "parallel.strategy=fsdp", f"output_dir={run_dir}", "--quiet", "--nproc", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "grpolab", "train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "step-2").exists():
        assert process.poll() is None, "the run ended before the test could kill it"
        assert time.time() < deadline
        time.sleep(0.02)
    for pid in [*descendants(process.pid), process.pid]:  # every rank dies at once, as in a lost machine
        os.kill(pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "final").exists()
    run_cli("train", "--resume", str(run_dir), "--quiet", "--nproc", "2", check=True)
    assert_same_run(two_processes("fsdp"), run_dir, tolerance=0.0)  # same ranks, same order: bitwise


def test_one_process_collectives_are_identities():
    alone = Parallel()
    assert alone.sum([1.5, 2.0]) == [1.5, 2.0]
    assert alone.share([1, 2, 3]) == ([1, 2, 3], 0)
    assert alone.gather("x") == ["x"]
    assert alone.on_main(lambda: 7) == 7
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.equal(alone.batch_wide(lambda r: r * 2, rewards), rewards * 2)


def test_shares_are_contiguous_slices():
    items = list(range(8))
    assert Parallel(rank=1, world_size=2).share(items) == ([4, 5, 6, 7], 4)
    assert Parallel(rank=2, world_size=4).share(items) == ([4, 5], 4)


def test_engine_call_seeds():
    assert call_seed(123, 0) == 123  # one call from prompt 0: the one-process seed is unchanged
    assert len({call_seed(123, first) for first in range(64)}) == 64


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["rollout.prompts_per_step=3"], 2, "cannot be shared equally by 2 processes"),
        (["grpo.dynamic_sampling=true"], 2, "dynamic_sampling: not supported"),
        (["parallel.cpu_offload=true"], 2, "parallel.cpu_offload: needs"),
    ],
)
def test_what_many_processes_refuse(overrides, world, message):
    config = load_config(None, overrides)
    if message.startswith("parallel.cpu_offload") and torch.cuda.is_available():
        config.parallel.strategy = "ddp"
    with pytest.raises(ConfigError, match=message):
        check_world(config, world)


def test_lora_with_fsdp_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="parallel.strategy: 'fsdp' with LoRA"):
        load_config(None, ["lora.rank=8", "parallel.strategy=fsdp"])


def test_nproc_refuses_an_uneven_split_before_launching(tmp_path):
    result = run_cli(
        "train", "model=tiny-random", "rollout.prompts_per_step=3", f"output_dir={tmp_path}/r", "--nproc", "2"
    )
    assert result.returncode == 2 and "cannot be shared equally" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fsdp_with_cpu_offload_on_one_gpu(tmp_path):
    run_dir = tmp_path / "gpu"
    args = [
        *SETTINGS,
        "train.max_steps=2",
        "train.precision=bf16",
        "parallel.strategy=fsdp",
        "parallel.cpu_offload=true",
    ]
    run_cli("train", *args, f"output_dir={run_dir}", "--quiet", "--nproc", "1", check=True)
    assert [m["step"] for m in metrics(run_dir)] == [1, 2]
    assert (run_dir / "final" / "model.safetensors").exists()
