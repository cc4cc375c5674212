"""`grpolab bench step --vs trl [key=value ...]`: seconds and peak memory of one GRPO step, grpolab against
TRL's GRPOTrainer, on the same configuration (issue 7).

Each side runs in its own child process (`python -m grpolab.bench.step --side grpolab|trl`), so that its
peak RSS (VmHWM of /proc/self/status, read by the child at the end) is its own. Each child runs `warmup`
untimed steps and then `steps` timed ones; the parent prints one JSON line with the medians.

The configuration is grpolab's `Config` (the `key=value` overrides of `grpolab train`) on top of the
benchmark's defaults below; the TRL side translates it into a `GRPOConfig` (`trl_step.py`). Both sides
draw the same prompts in the same order: the task's training stream for the seed, reduced to additions
when the task is `arithmetic` (the issue's "two-digit addition prompts"; `bench_prompts=all` keeps all).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grpolab.errors import ConfigError

# The configuration: SmolLM2-135M-Instruct, 4 prompts x 8 completions, 64 new tokens, beta 0.04,
# mu 1, lr 1e-5. Logging, evaluation and checkpoints are off on both sides: they are not part of a step.
DEFAULTS = [
    "model=smollm2-135m",
    "task=arithmetic",
    "rollout.engine=grpolab",
    "rollout.prompts_per_step=4",
    "rollout.group_size=8",
    "rollout.max_new_tokens=64",
    "rollout.temperature=1.0",
    "grpo.beta=0.04",
    "grpo.mu=1",
    "train.learning_rate=1e-5",
    "train.micro_batch_size=8",  # both sides: 4 micro-batches of 8 completions per optimizer step
    "train.save_every=0",
    "reward.num_workers=0",
    "eval.before=false",
    "eval.after=false",
    "log.quiet=true",
    "log.tensorboard=false",
    "log.report=false",
    "log.samples_every=0",
]


def bench_config(overrides: list[str], output_dir: str):
    from grpolab.config import load_config

    return load_config(None, [*DEFAULTS, *overrides, f"output_dir={output_dir}", "overwrite=true"])


def prompt_stream(task, config, all_prompts: bool):
    """The examples both sides train on, in order."""
    stream = task.train_stream(config.seed)
    if config.task == "arithmetic" and not all_prompts:
        stream = (example for example in stream if example["operation"] == "+")
    return stream


def peak_rss_gb() -> float:
    """This process's peak resident set size (VmHWM), in GB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("VmHWM not found in /proc/self/status")


def run_grpolab_side(overrides: list[str], warmup: int, steps: int, all_prompts: bool, floor: bool = False) -> dict:
    from grpolab.bench.matmul_floor import MatmulRecorder, time_matmuls
    from grpolab.parallel.distributed import Parallel
    from grpolab.training.metrics import Timer
    from grpolab.training.setup import setup
    from grpolab.training.trainer import grpo_step

    with tempfile.TemporaryDirectory() as folder:
        config = bench_config(overrides, folder)
        run, _ = setup(config, lambda *_: None, Parallel())  # one process
        stream = prompt_stream(run.task, config, all_prompts)
        seconds, rewards, phases = [], [], []
        for step in range(1, warmup + steps + 1):
            begin = time.perf_counter()
            record, _ = grpo_step(run, step, stream)
            elapsed = time.perf_counter() - begin
            rewards.append(record["reward_mean"])
            print(f"bench step: grpolab step {step}: {elapsed:.2f} s", file=sys.stderr, flush=True)
            if step > warmup:
                seconds.append(elapsed)
                phases.append({k.removeprefix("time/"): v for k, v in record.items() if k.startswith("time/")})
        peak = peak_rss_gb()  # before the recorded step: the recorder's bookkeeping is not the trainer's memory
        matmuls = None
        if floor:  # one more step, untimed, with every matrix product counted
            with MatmulRecorder(phase=lambda: Timer.current) as recorder:
                grpo_step(run, warmup + steps + 1, stream)
            matmuls = time_matmuls(recorder.counts)
        run.rewards.close()
    phase_medians = {name: statistics.median(p.get(name, 0.0) for p in phases) for name in phases[0]} if phases else {}
    result = {"step_seconds": seconds, "rewards": rewards, "phases": phase_medians, "peak_rss_gb": peak}
    return {**result, "matmuls": matmuls} if floor else result


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpolab.bench.step")
    parser.add_argument("--side", choices=["grpolab", "trl"], required=True)
    parser.add_argument("--spec", required=True, help="JSON: overrides, warmup, steps, all_prompts, threads")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    import torch

    from grpolab.config import parse_override

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if args.side == "grpolab":
        from grpolab.model.memory import keep_freed_memory

        keep_freed_memory()  # as `grpolab train` does (the TRL side keeps its default malloc)
    if args.side == "trl":
        from grpolab.bench.trl_step import run_trl_side

        options = dict(parse_override(text) for text in spec["trl_options"])
        result = run_trl_side(
            spec["overrides"], spec["warmup"], spec["steps"], spec["all_prompts"], options, spec.get("floor", False)
        )
    else:
        result = run_grpolab_side(
            spec["overrides"], spec["warmup"], spec["steps"], spec["all_prompts"], spec.get("floor", False)
        )
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_side(side: str, python: str, spec: dict, module: str = "grpolab.bench.step") -> dict:
    """Run one side in a child process (`python -m MODULE --side SIDE --spec JSON`); its progress goes to our
    stderr, its result is its last RESULT line."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    command = [python, "-m", module, "--side", side, "--spec", json.dumps(spec)]
    print(f"bench: running the {side} side ({spec['warmup']} warm-up + {spec['steps']} steps)", file=sys.stderr)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench: the {side} side failed (exit {done.returncode}); see its output above")
    print(f"bench: {side} side done: {lines[-1].removeprefix('RESULT ')}", file=sys.stderr, flush=True)
    return json.loads(lines[-1].removeprefix("RESULT "))


def trl_available(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import trl"], capture_output=True)
    return probe.returncode == 0


def add_arguments(parser) -> None:
    parser.add_argument("--vs", choices=["trl", "none"], default="none", help="also run TRL's GRPOTrainer")
    parser.add_argument("--trl-python", default=sys.executable, metavar="PATH", help="an interpreter that has trl")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    parser.add_argument("--all-prompts", action="store_true", help="arithmetic: all operations, not only +")
    parser.add_argument(
        "--trl-option", action="append", default=[], metavar="KEY=VALUE", help="a GRPOConfig field for the TRL side"
    )
    parser.add_argument("--curve", action="store_true", help="also print each side's per-step mean reward")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="one more step per side with its matrix products recorded, then timed alone: the step's matmul floor",
    )


def run(overrides: list[str], args=None) -> int:

    args = args or argparse.Namespace(
        vs="none",
        trl_python=sys.executable,
        warmup=1,
        steps=3,
        threads=0,
        all_prompts=False,
        curve=False,
        trl_option=[],
        floor=False,
    )
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError("bench step: --steps must be >= 1 and --warmup >= 0")
    with tempfile.TemporaryDirectory() as folder:
        config = bench_config(overrides, folder)  # refuse a bad override before any child starts
    if args.vs == "trl" and not trl_available(args.trl_python):
        raise ConfigError(
            f"bench step --vs trl: trl is not importable by {args.trl_python} "
            "(pip install -e '.[bench]', or point --trl-python at an interpreter that has it)"
        )
    spec = {
        "overrides": overrides,
        "warmup": args.warmup,
        "steps": args.steps,
        "all_prompts": args.all_prompts,
        "threads": args.threads,
        "trl_options": args.trl_option,
        "floor": args.floor,
    }
    sides = {"grpolab": run_side("grpolab", sys.executable, spec)}
    if args.vs == "trl":
        sides["trl"] = run_side("trl", args.trl_python, spec)
    record = summary(config, args, sides)
    print(json.dumps(record), flush=True)
    return 0


def summary(config, args, sides: dict) -> dict:
    record = {
        "model": config.model,
        "prompts": config.rollout.prompts_per_step,
        "group_size": config.rollout.group_size,
        "max_new_tokens": config.rollout.max_new_tokens,
        "beta": config.grpo.beta,
        "mu": config.grpo.mu,
        "learning_rate": config.train.learning_rate,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
    }
    for name, side in sides.items():
        record[f"{name}_step_seconds"] = round(statistics.median(side["step_seconds"]), 3)
        record[f"{name}_peak_rss_gb"] = round(side["peak_rss_gb"], 3)
    if "trl" in sides:
        record["speedup"] = round(record["trl_step_seconds"] / record["grpolab_step_seconds"], 2)
        record["rss_ratio"] = round(record["grpolab_peak_rss_gb"] / record["trl_peak_rss_gb"], 3)
    for name, side in sides.items():
        record[f"{name}_all_step_seconds"] = [round(s, 3) for s in side["step_seconds"]]
        record[f"{name}_threads"] = side["threads"]
    if "trl" in sides:
        record["trl_gradient_checkpointing"] = sides["trl"]["gradient_checkpointing"]
        record["trl_options"] = args.trl_option
    record["grpolab_phase_seconds"] = {k: round(v, 3) for k, v in sides["grpolab"]["phases"].items()}
    if args.floor:
        record.update(floor_summary(record, sides))
    if args.curve:
        for name, side in sides.items():
            record[f"{name}_rewards"] = [round(r, 4) for r in side["rewards"]]
    return record


def floor_summary(record: dict, sides: dict) -> dict:
    """Each side's matmul floor (`matmul_floor.py`) against its measured step, and the speedup over TRL that
    grpolab's step would reach if it took no longer than its own matrix products."""
    floors = {}
    for name, side in sides.items():
        matmuls = side["matmuls"]
        floors[f"{name}_matmul_floor_seconds"] = round(matmuls["seconds"], 3)
        floors[f"{name}_matmul_tflop"] = round(matmuls["tflop"], 4)
        floors[f"{name}_matmul_share"] = round(matmuls["seconds"] / record[f"{name}_step_seconds"], 3)
    matmuls = sides["grpolab"]["matmuls"]
    floors["grpolab_matmul_floor_by_phase"] = {k: round(v, 3) for k, v in matmuls["by_phase"].items()}
    floors["grpolab_matmul_tflop_by_phase"] = {k: round(v, 4) for k, v in matmuls["tflop_by_phase"].items()}
    if "trl" in sides:
        floors["speedup_at_grpolab_floor"] = round(
            record["trl_step_seconds"] / floors["grpolab_matmul_floor_seconds"], 2
        )
    return floors


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
