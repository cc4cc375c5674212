"""Data for file-backed tasks: reading JSONL with one-line errors, the train / held-out split, and the
seeded endless training stream.

Splits: a folder holding `train.jsonl` and `test.jsonl` uses them as they are. A single file (or a data
set with one split) holds out every tenth row (rows 0, 10, 20, ...) and trains on the rest, so a run
never trains on a row it evaluates on, whatever `eval.n` is.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grpolab.errors import TaskError
from grpolab.tasks.base import Task

HELD_OUT_EVERY = 10


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a JSONL file (`.gz` too); a TaskError names the file and the line of any problem."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such data file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise TaskError(f"{path} line {number}: not valid JSON (expected one object per line)") from None
                if not isinstance(row, dict):
                    raise TaskError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
                missing = [name for name in required if name not in row]
                if missing:
                    raise TaskError(f"{path} line {number}: missing field(s) {', '.join(missing)}")
                rows.append(row)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise TaskError(f"{path}: not a UTF-8 JSONL file ({error})") from None
    if not rows:
        raise TaskError(f"{path}: no rows (empty file)")
    return rows


@dataclass
class Splits:
    train: list[dict]
    held_out: list[dict]


def split_rows(rows: list[dict]) -> Splits:
    """Every tenth row held out (module docstring)."""
    return Splits(
        train=[row for index, row in enumerate(rows) if index % HELD_OUT_EVERY != 0],
        held_out=rows[::HELD_OUT_EVERY],
    )


def load_splits(path: str, required: tuple[str, ...]) -> Splits:
    """A folder with train.jsonl + test.jsonl, or one file split by `split_rows`."""
    folder = Path(path)
    if folder.is_dir():
        train, test = folder / "train.jsonl", folder / "test.jsonl"
        if not train.is_file() or not test.is_file():
            raise TaskError(f"{path}: a data folder must hold train.jsonl and test.jsonl")
        return Splits(train=read_jsonl(train, required), held_out=read_jsonl(test, required))
    return split_rows(read_jsonl(path, required))


def endless_stream(rows: list[dict], seed: int) -> Iterator[dict]:
    """Epoch after epoch over `rows`, each in a fresh order drawn from `seed`."""
    if not rows:
        raise TaskError("no training rows")
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for index in order:
            yield rows[index]


def first(rows: list[dict], n: int, task: str) -> list[dict]:
    if n > len(rows):
        raise TaskError(f"eval.n: task {task} has {len(rows)} held-out examples, got {n}")
    return rows[:n]


def load_hub(dataset: str, config: str | None, required: tuple[str, ...]) -> Splits:
    """A Hugging Face hub data set (needs the `datasets` package and a network); not tested offline."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise TaskError(f"loading {dataset} from the hub needs `pip install datasets`; or pass a local file") from None
    try:
        loaded = load_dataset(dataset, config)
    except Exception as error:  # network, missing data set: one line either way
        raise TaskError(f"cannot load {dataset} from the hub ({type(error).__name__}); pass a local file") from None
    splits = {name: [dict(row) for row in part] for name, part in loaded.items()}
    for name, rows in splits.items():
        missing = [field for field in required if rows and field not in rows[0]]
        if missing:
            raise TaskError(f"{dataset} split {name}: missing field(s) {', '.join(missing)}")
    if "train" in splits and "test" in splits:
        return Splits(train=splits["train"], held_out=splits["test"])
    return split_rows([row for rows in splits.values() for row in rows])


class FileTask(Task):
    """A task whose rows come from a local file or folder (`source`) or, with no source, the hub.
    Rows load on first use, so scoring with `grpolab score` never needs the task's data."""

    hub: tuple[str, str | None] | None = None  # (data set, config)

    def __init__(self, source: str = ""):
        self.source = source
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            if self.source:
                self._splits = load_splits(self.source, self.fields)
            elif self.hub:
                self._splits = load_hub(*self.hub, self.fields)
            else:
                raise TaskError(f"task {self.name} needs a data file: task={self.name}:PATH")
        return self._splits

    def drop_rows(self, fits) -> dict[str, list[int]]:
        splits = self.splits()
        dropped = {
            "train": [index for index, row in enumerate(splits.train) if not fits(row)],
            "held_out": [index for index, row in enumerate(splits.held_out) if not fits(row)],
        }
        if dropped["train"]:
            gone = set(dropped["train"])
            splits.train = [row for index, row in enumerate(splits.train) if index not in gone]
        return dropped

    def train_stream(self, seed: int) -> Iterator[dict]:
        return endless_stream(self.splits().train, seed)

    def eval_examples(self, n: int) -> list[dict]:
        return first(self.splits().held_out, n, self.name)
