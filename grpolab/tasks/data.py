"""Data for file-backed tasks: reading JSONL with one-line errors, loading through the Hugging Face `datasets`
library (hub data sets, and the local files of `task=hf:`), the train / held-out split, and the seeded endless
training stream.

Splits: a folder holding `train.jsonl` and `test.jsonl` (or a `datasets` data set with `train` and `test`
splits) uses them as they are. A single file (or the one split that `split=` picks, or a data set without
both train and test, its splits taken together) holds out every tenth row (rows 0, 10, 20, ...) and trains on
the rest, so a run never trains on a row it evaluates on, whatever `eval.n` is.

`datasets` is imported only when such a task loads its rows: it is an optional dependency, and most runs
never need it.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def quiet(datasets):
    """`datasets`' error logs and progress bars off while it loads: the one-line TaskError says what failed,
    and stays the only line (hub downloads keep huggingface_hub's own progress bars)."""
    verbosity = datasets.logging.get_verbosity()
    bars = datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None and not datasets.utils.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if bars:
        datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.utils.enable_progress_bars()


def load_with_datasets(source: str, failure: str, *args, **kwargs):
    """`datasets.load_dataset(*args, **kwargs)`; a missing package or any failure to load is one TaskError
    naming `source` (`failure` says what could not be done)."""
    try:
        import datasets
    except ImportError:
        needs = "loading it needs the datasets package: pip install datasets (or grpolab[hf])"
        raise TaskError(f"{source}: {needs}") from None
    try:
        with quiet(datasets):
            return datasets.load_dataset(*args, **kwargs)
    except Exception as error:  # network, missing data set, unreadable file: one line whichever
        cause = error.__cause__ or error  # a DatasetGenerationError wraps the reader's own, telling error
        message = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else "no message"
        raise TaskError(f"{source}: {failure} ({type(cause).__name__}: {message})") from None


def chosen_splits(loaded, source: str, split: str | None) -> dict:
    """The splits of a `datasets.DatasetDict` that a task uses: `split` alone, else train and test, else all."""
    if split is not None:
        if split not in loaded:
            raise TaskError(f"{source}: no split {split!r} (available: {', '.join(loaded)})")
        return {split: loaded[split]}
    if "train" in loaded and "test" in loaded:
        return {"train": loaded["train"], "test": loaded["test"]}
    return dict(loaded)


def dataset_splits(loaded, source: str, required: tuple[str, ...], split: str | None = None) -> Splits:
    """A loaded `datasets.DatasetDict` as Splits (module docstring), its fields checked by split."""
    parts = chosen_splits(loaded, source, split)
    for name, part in parts.items():
        missing = [field for field in required if field not in part.column_names]
        if missing:
            columns = ", ".join(part.column_names)
            raise TaskError(f"{source} split {name}: missing field(s) {', '.join(missing)} (columns: {columns})")
    rows = {name: part.to_list() for name, part in parts.items()}
    if split is None and "train" in rows and "test" in rows:
        return Splits(train=rows["train"], held_out=rows["test"])
    return split_rows([row for part in rows.values() for row in part])


def load_hub(dataset: str, config: str | None, required: tuple[str, ...], split: str | None = None) -> Splits:
    """A Hugging Face hub data set (needs the `datasets` package and a network); not tested offline."""
    loaded = load_with_datasets(dataset, "cannot load it from the hub; pass a local file", dataset, config)
    return dataset_splits(loaded, dataset, required, split)


class FileTask(Task):
    """A task whose rows come from a local file or folder (`source`) or, with no source, the hub.
    Rows load on first use, so scoring with `grpolab score` never needs the task's data."""

    hub: tuple[str, str | None] | None = None  # (data set, config)

    def __init__(self, source: str = ""):
        self.source = source
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = self.load()
        return self._splits

    def load(self) -> Splits:
        """The task's rows, read once by `splits`."""
        if self.source:
            return load_splits(self.source, self.fields)
        if self.hub:
            return load_hub(*self.hub, self.fields)
        raise TaskError(f"task {self.name} needs a data file: task={self.name}:PATH")

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
