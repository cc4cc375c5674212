"""`grpolab bench ppo [key=value ...] [--steps N] [--seeds 0,1,2] [--curve]`: what GRPO saves against PPO with a
value model (issue 21), on the same task, measured in one run.

For each seed, GRPO and PPO each train in a child process of their own (`python -m grpolab.bench.ppo --side
grpo|ppo`), so that each peak RSS (VmHWM) is its own. Both take the same completions per step: GRPO N prompts x
G samples, PPO N x G prompts x 1 sample (PPO's usual single sample; `--ppo-group-size` changes it), the same
steps, seed, learning rate, beta and clip. The parent prints one JSON line: per side the peak RSS, the median
step seconds, the median seconds per phase, the state memory by part (weights, gradients, optimizer moments,
value model, reference: the bytes of those tensors; activations and the rest: the peak RSS above the state and
the process's baseline), and with `--curve` the held-out greedy accuracy before and after, and the per-step
training accuracy, for every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

from grpolab.bench.step import DEFAULTS, bench_config, peak_rss_gb, run_side
from grpolab.errors import ConfigError
from grpolab.training.plan import state_memory  # the same parts `grpolab plan` reports

SIDES = ("grpo", "ppo")


def run_training_side(overrides: list[str], steps: int, curve: bool) -> dict:
    """One side's run: set-up, `steps` steps (the same loop step `grpolab train` takes), optional evaluation."""
    from grpolab.parallel.distributed import Parallel
    from grpolab.training.setup import CountingStream, setup
    from grpolab.training.trainer import evaluate, step_function

    baseline = peak_rss_gb()
    with tempfile.TemporaryDirectory() as folder:
        config = bench_config(overrides, folder)
        run, _ = setup(config, lambda *_: None, Parallel())
        stream = CountingStream(run.task.train_stream(config.seed), skip=0)
        result = {"accuracy_before": evaluate(run, run.eval_examples) if curve else None}
        seconds, phases, accuracy = [], [], []
        for step in range(1, steps + 1):
            begin = time.perf_counter()
            record, _ = step_function(run, step, stream)
            seconds.append(time.perf_counter() - begin)
            accuracy.append(record["accuracy"])
            phases.append({k.removeprefix("time/"): v for k, v in record.items() if k.startswith("time/")})
            print(f"bench ppo: {config.algorithm} step {step}: {seconds[-1]:.2f} s", file=sys.stderr, flush=True)
        peak = peak_rss_gb()
        memory = state_memory(run)
        result["accuracy_after"] = evaluate(run, run.eval_examples) if curve else None
        run.rewards.close()
    memory["activations_and_rest"] = max(0.0, peak - baseline - sum(memory.values()))
    names = sorted({name for p in phases for name in p})
    result.update(
        step_seconds=seconds,
        phases={name: statistics.median(p.get(name, 0.0) for p in phases) for name in names},
        peak_rss_gb=peak,
        state_gb=memory,
        train_accuracy=accuracy,
    )
    return result


def side_overrides(side: str, overrides: list[str], seed: int, ppo_group_size: int) -> list[str]:
    """The side's config: GRPO N x G; PPO (N x G / g) prompts x g samples: the same completions per step."""
    config = bench_config([*overrides], "/nonexistent")
    prompts, group = config.rollout.prompts_per_step, config.rollout.group_size
    common = [*overrides, f"seed={seed}"]
    if side == "grpo":
        return [*common, "algorithm=grpo"]
    completions = prompts * group
    if completions % ppo_group_size:
        raise ConfigError(f"bench ppo: {completions} completions per step do not split into groups of {ppo_group_size}")
    return [
        *common,
        "algorithm=ppo",
        f"rollout.prompts_per_step={completions // ppo_group_size}",
        f"rollout.group_size={ppo_group_size}",
    ]


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpolab.bench.ppo")
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    from grpolab.model.memory import keep_freed_memory

    keep_freed_memory()  # as `grpolab train` does
    result = run_training_side(spec["overrides"], spec["steps"], spec["curve"])
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=3, help="training steps per side and seed (default 3)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--ppo-group-size", type=int, default=1, help="PPO's samples per prompt (default 1)")
    parser.add_argument("--curve", action="store_true", help="held-out accuracy before / after, per-step accuracy")


def run(overrides: list[str], args=None) -> int:
    args = args or argparse.Namespace(steps=3, seeds="0", ppo_group_size=1, curve=False)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"bench ppo: --seeds {args.seeds!r} is not a comma-separated list of integers") from None
    if args.steps < 1 or args.ppo_group_size < 1:
        raise ConfigError("bench ppo: --steps and --ppo-group-size must be >= 1")
    eval_keys = ["eval.before=true", "eval.after=true"] if args.curve else []
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for seed in seeds:
        for side in SIDES:
            side_keys = side_overrides(side, [*eval_keys, *overrides], seed, args.ppo_group_size)
            bench_config(side_keys, "/nonexistent")  # refused here, in one line, before a child starts
            spec = {"overrides": side_keys, "steps": args.steps, "curve": args.curve, "warmup": 0}
            runs[side].append(run_side(side, sys.executable, spec, module="grpolab.bench.ppo"))
    print(json.dumps(summary(overrides, args, seeds, runs)), flush=True)
    return 0


def median_over(runs: list[dict], pick) -> float:
    return statistics.median(pick(run) for run in runs)


def medians(runs: list[dict], key: str) -> dict:
    """The median over the seeds' runs of each entry of `run[key]` (a mapping of name -> seconds or GB)."""
    names = sorted({name for run in runs for name in run[key]})
    return {name: round(statistics.median(run[key].get(name, 0.0) for run in runs), 3) for name in names}


def summary(overrides: list[str], args, seeds: list[int], runs: dict[str, list[dict]]) -> dict:
    config = bench_config(overrides, "/nonexistent")
    record = {
        "model": config.model,
        "completions_per_step": config.rollout.prompts_per_step * config.rollout.group_size,
        "grpo_group_size": config.rollout.group_size,
        "ppo_group_size": args.ppo_group_size,
        "steps": args.steps,
        "seeds": seeds,
    }
    for side, side_runs in runs.items():
        record[f"{side}_peak_rss_gb"] = round(median_over(side_runs, lambda r: r["peak_rss_gb"]), 3)
        # the first step pays for the first allocations: the median over the rest where there is a rest
        record[f"{side}_step_seconds"] = round(
            statistics.median(s for r in side_runs for s in (r["step_seconds"][1:] or r["step_seconds"])), 3
        )
    record["memory_ratio"] = round(record["ppo_peak_rss_gb"] / record["grpo_peak_rss_gb"], 3)
    record["time_ratio"] = round(record["ppo_step_seconds"] / record["grpo_step_seconds"], 3)
    for side, side_runs in runs.items():
        record[f"{side}_phase_seconds"] = medians(side_runs, "phases")
        record[f"{side}_state_gb"] = medians(side_runs, "state_gb")
        record[f"{side}_peak_rss_gb_per_seed"] = [round(r["peak_rss_gb"], 3) for r in side_runs]
        if args.curve:
            record[f"{side}_accuracy_before"] = [r["accuracy_before"] for r in side_runs]
            record[f"{side}_accuracy_after"] = [r["accuracy_after"] for r in side_runs]
            record[f"{side}_train_accuracy"] = [[round(a, 4) for a in r["train_accuracy"]] for r in side_runs]
    return record


__all__ = ["DEFAULTS", "run"]

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
