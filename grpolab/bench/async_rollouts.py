"""`grpolab bench async [key=value ...] [--minutes M] [--seeds 0,1,2] [--staleness 0,1,2]`: the synchronous loop
(one process, `--threads` torch threads; 0 leaves it out) against one trainer (`--trainer-threads`, default 1) and
`--workers` rollout workers (`--worker-threads` each, default 1) at each max_staleness k, on the same model and task,
for the same training wall-clock (`train.max_minutes`), each seed's runs one after the other (never two heavy runs at
once on a small machine).

Every run is a real `grpolab train` in a child process (the defaults plus the key=value overrides). One JSON line
per run on stdout as it finishes, then a summary line: per setting, over seeds, the medians of steps per hour,
trainer idle fraction (time waiting for a rollout / step seconds), worker idle fraction (waiting for a job or for
weights / the worker's time), weight-sync seconds on each side, the staleness histogram, and the held-out greedy
accuracy after training (before training once: the base model's, the same for every setting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from grpolab.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall-clock per run (train.max_minutes)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--staleness", default="0,1,2", help="comma-separated rollout.max_staleness values")
    parser.add_argument("--workers", type=int, default=1, help="rollout workers beside the trainer")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the synchronous run")
    parser.add_argument("--trainer-threads", type=int, default=1, help="torch threads of the trainer beside workers")
    parser.add_argument("--worker-threads", type=int, default=1, help="torch threads of each rollout worker")
    parser.add_argument("--output", default="", help="keep the run folders here (default: a temporary folder)")


def settings(args) -> dict[str, list[str]]:
    """Each compared setting's overrides."""
    out = {"sync": [f"train.threads={args.threads}"]} if args.threads else {}
    for k in parse_list(args.staleness, "--staleness"):
        name = f"workers{args.workers}_k{k}"
        if (args.trainer_threads, args.worker_threads) != (1, 1):
            name += f"_t{args.trainer_threads}w{args.worker_threads}"
        out[name] = [
            f"train.threads={args.trainer_threads}", f"rollout.worker_threads={args.worker_threads}",
            f"rollout.workers={args.workers}",
            f"rollout.max_staleness={k}",
        ]  # fmt: skip
    return out


def parse_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ConfigError(f"{flag}: expected integers >= 0, got {text!r}")
    return values


def summarise_run(run_dir: Path) -> dict:
    """One run's numbers from its metrics.jsonl and eval.json."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    seconds = sum(r["step_seconds"] for r in records)
    waits = sum(r.get("time/wait_rollout", 0.0) for r in records)
    worker = [r.get(f"async/worker_{part}_s", 0.0) for r in records for part in ("idle", "sync", "sample")]
    idle = sum(r.get("async/worker_idle_s", 0.0) for r in records)
    staleness = Counter(int(r["async/staleness"]) for r in records if "async/staleness" in r)
    return {
        "steps": len(records),
        "train_seconds": seconds,
        "steps_per_hour": 3600 * len(records) / seconds,
        "trainer_idle_frac": waits / seconds,
        "worker_idle_frac": idle / sum(worker) if sum(worker) else None,
        "trainer_sync_s": statistics.median(r.get("time/weight_sync", 0.0) for r in records),
        "worker_sync_s": statistics.median(r.get("async/worker_sync_s", 0.0) for r in records),
        "generate_s": statistics.median(r.get("time/generate", r.get("async/worker_sample_s", 0.0)) for r in records),
        "staleness": {str(k): staleness[k] for k in sorted(staleness)},
        "accuracy_before": evaluation.get("before", {}).get("accuracy"),
        "accuracy_after": evaluation.get("after", {}).get("accuracy"),
        "reward_mean_last5": statistics.mean(r["reward_mean"] for r in records[-5:]),
    }


def run_one(overrides: list[str], run_dir: Path) -> dict:
    command = [sys.executable, "-m", "grpolab", "train", *overrides, f"output_dir={run_dir}", "log.quiet=true",
               "log.report=false", "train.save_every=0"]  # fmt: skip
    begin = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"bench async: a run failed: {last}")
    return {**summarise_run(run_dir), "wall_seconds": time.monotonic() - begin}


def run(overrides: list[str], args) -> int:
    seeds = parse_list(args.seeds, "--seeds")
    compared = settings(args)
    root = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="grpolab-bench-async-"))
    base = [*overrides, f"train.max_minutes={args.minutes}", "train.max_steps=100000"]
    rows = []
    for seed in seeds:
        for name, extra in compared.items():
            first = not rows
            run_dir = root / f"seed{seed}-{name}"
            row = run_one([*base, *extra, f"seed={seed}", f"eval.before={'true' if first else 'false'}"], run_dir)
            row.update(setting=name, seed=seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    before = rows[0]["accuracy_before"]
    summary = {"minutes": args.minutes, "seeds": seeds, "overrides": overrides, "accuracy_before": before}
    for name in compared:
        mine = [r for r in rows if r["setting"] == name]
        medians = {
            key: statistics.median(r[key] for r in mine if r[key] is not None)
            for key in ("steps_per_hour", "trainer_idle_frac", "trainer_sync_s", "worker_sync_s", "accuracy_after")
            if any(r[key] is not None for r in mine)
        }
        if mine[0]["worker_idle_frac"] is not None:
            medians["worker_idle_frac"] = statistics.median(r["worker_idle_frac"] for r in mine)
        staleness = Counter()
        for r in mine:
            staleness.update({int(k): v for k, v in r["staleness"].items()})
        medians["staleness"] = {str(k): staleness[k] for k in sorted(staleness)}
        medians["accuracy_after_by_seed"] = [r["accuracy_after"] for r in mine]
        summary[name] = medians
    print(json.dumps({"summary": summary}), flush=True)
    return 0
