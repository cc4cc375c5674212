"""`grpolab score task=TASK input=FILE.jsonl output=OUT.jsonl [reward.*=...]`: score existing completions with a
task's reward functions, without a model.

Each input line holds the task's own fields plus `completion`; each output line is the input plus
`reward` (the weighted total) and `rewards` (per function). The last line printed is one JSON object:
`{"n": ..., "mean_reward": ..., "errors": ..., "seconds": ...}`. The reward keys are `grpolab train`'s
(`reward.weights.NAME`, `reward.functions`, `reward.num_workers`, `reward.timeout_seconds`, ...), except that a
reward call that fails scores 0 and is counted in `errors` by default (`reward.on_error=raise` stops instead).
The output is written to a temporary file and renamed at the end, so a failed run leaves no partial output;
an existing output is kept unless `overwrite=true`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpolab.commands.common import add_stage_parser, load_stage_config
from grpolab.config import RANGES, RewardConfig, check_ranges
from grpolab.errors import ConfigError, TaskError


@dataclass
class ScoreConfig:
    task: str = ""  # the task whose rewards score, e.g. gsm8k, humaneval, jsonl:PATH, my_task.py:MyTask
    input: str = ""  # JSONL: the task's fields + `completion` per line
    output: str = ""  # JSONL: each input line + `reward` + `rewards`
    overwrite: bool = False  # replace an existing output file
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(on_error="zero"))

    def validate(self) -> None:
        for key in ("task", "input", "output"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: required (grpolab score task=TASK input=IN.jsonl output=OUT.jsonl)")
        check_ranges(self, {key: RANGES[key] for key in RANGES if key.startswith("reward.")})


def register(subparsers) -> None:
    add_stage_parser(
        subparsers,
        "score",
        ScoreConfig,
        "score existing completions with a task's rewards",
        "Score the completions of a JSONL file with a task's reward functions, without a model.",
    ).set_defaults(func=run)


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
    from grpolab.rewards.runner import RewardRunner, resolve_weights
    from grpolab.tasks import get_task

    score_config = load_stage_config(args, ScoreConfig)
    config = score_config.reward
    output = Path(score_config.output)
    if output.exists() and not score_config.overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=true to replace it")
    task = get_task(score_config.task, config)
    weights = resolve_weights(task, config.weights)
    rows = read_rows(task, score_config.input)
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
