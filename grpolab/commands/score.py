"""`grpolab score --task TASK --input FILE.jsonl --output OUT.jsonl`: score existing completions with a
task's reward functions, without a model.

Each input line holds the task's own fields plus `completion`; each output line is the input plus
`reward` (the weighted total) and `rewards` (per function). The last line printed is one JSON object:
`{"n": ..., "mean_reward": ..., "errors": ..., "seconds": ...}`. A reward call that fails scores 0 and is
counted in `errors` (`--on-error raise` stops instead). The output is written to a temporary file and
renamed at the end, so a failed run leaves no partial output; an existing output is kept unless
`--overwrite`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from grpolab.errors import TaskError, UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("score", help="score existing completions with a task's rewards")
    parser.add_argument("--task", required=True, help="task name, e.g. gsm8k, humaneval, jsonl:PATH")
    parser.add_argument("--input", required=True, help="JSONL: the task's fields + `completion` per line")
    parser.add_argument("--output", required=True, help="JSONL: each input line + `reward` + `rewards`")
    parser.add_argument("--weight", action="append", default=[], metavar="NAME=W", help="reward weight (repeatable)")
    parser.add_argument("--on-error", choices=["zero", "raise"], default="zero")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the reward functions")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per reward call")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run)


def parse_weights(items: list[str]) -> dict[str, float]:

    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise UserError(f"--weight {item!r}: expected NAME=NUMBER") from None
    return weights


def read_rows(task, path: str) -> list[dict]:
    from grpolab.tasks.data import read_jsonl

    rows = read_jsonl(path, (*task.fields, "completion"))
    prepared = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row["completion"], str):
            raise TaskError(f"{path} row {number}: `completion` must be a string")
        try:
            prepared.append(task.prepare_row(row))
        except TaskError as error:
            raise TaskError(f"{path} row {number}: {error}") from None
    return prepared


def run(args) -> int:
    from grpolab.config import RewardConfig
    from grpolab.rewards.runner import RewardRunner, resolve_weights
    from grpolab.tasks import get_task

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    if args.workers < 0 or args.timeout <= 0:
        raise UserError("--workers must be >= 0 and --timeout > 0")
    config = RewardConfig(on_error=args.on_error, timeout_seconds=args.timeout, num_workers=args.workers)
    task = get_task(args.task, config)
    weights = resolve_weights(task, parse_weights(args.weight))
    rows = read_rows(task, args.input)
    start = time.perf_counter()  # scoring time: from rows read to output written
    functions = task.reward_functions()
    with RewardRunner(functions, weights, config.on_error, config.timeout_seconds, config.num_workers) as runner:
        scores = runner.score([row["completion"] for row in rows], rows)
    partial = output.with_name(output.name + ".partial")
    with open(partial, "w", encoding="utf-8") as file:
        for row_index, row in enumerate(rows):
            parts = {name: values[row_index] for name, values in scores.parts.items()}
            file.write(json.dumps({**row, "reward": scores.totals[row_index], "rewards": parts}) + "\n")
    os.replace(partial, output)
    for message in scores.error_messages[:5]:
        print(f"grpolab score: {message}", file=sys.stderr)
    mean = sum(scores.totals) / len(scores.totals)
    seconds = round(time.perf_counter() - start, 3)
    print(json.dumps({"n": len(rows), "mean_reward": mean, "errors": scores.errors, "seconds": seconds}))
    return 0
