"""`hf:DATASET`: questions and reference answers from any data set the Hugging Face `datasets` library reads,
scored like `jsonl:` (math-verify, and exact match after trimming and case-folding; `grpolab.tasks.jsonl`).

The spec is `task=hf:DATASET[,split=S][,question=FIELD][,answer=FIELD][,config=NAME]`. DATASET is a local
folder (`datasets` finds the data files inside it, e.g. train.parquet and test.parquet), a local `.parquet`,
`.json`, `.jsonl` or `.csv` file, or a hub id such as `openai/gsm8k` (needs a network). Fields default to
`question` and `answer`. A data set with `train` and `test` splits uses them as they are; `split=S` takes
the one split S instead and holds out every tenth row of it, as for a data set with a single split (a file
is one) or with other splits (taken together) (`grpolab.tasks.data`). `config=NAME` picks the hub data
set's (or folder's) configuration, as in `task=hf:openai/gsm8k,config=main`.

What is a local path: anything that exists, starts with `/`, `.` or `~`, has more than one `/` or ends
in one of the suffixes above; everything else (`name` or `owner/name`) is a hub id. So a mistyped local
file is told as missing, not looked for on the hub.

`datasets` is imported only when the rows load (on first use, as for every file task), and is needed only
then: `pip install datasets` (or `grpolab[hf]`).
"""

from __future__ import annotations

from pathlib import Path

from grpolab.errors import TaskError
from grpolab.tasks.data import Splits, dataset_splits, load_hub, load_with_datasets, split_rows
from grpolab.tasks.jsonl import JsonlTask

#: the `datasets` builder that reads a file, by the file's suffix
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def is_local(source: str) -> bool:
    """Whether `source` names a local file or folder rather than a hub id (module docstring)."""
    path = Path(source).expanduser()
    return (
        path.exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.suffix.lower() in BUILDERS
    )


def load_local(source: str, required: tuple[str, ...], split: str | None, config: str | None) -> Splits:
    """A local folder (its data files found by `datasets`) or one data file read by its suffix's builder."""
    path = Path(source).expanduser()
    if not path.exists():
        raise TaskError(f"{source}: no such file or folder")
    failure = "the datasets library cannot read it"
    if path.is_dir():
        return dataset_splits(load_with_datasets(source, failure, str(path), config), source, required, split)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        kinds = ", ".join(BUILDERS)
        raise TaskError(f"{source}: cannot read a {path.suffix or 'suffix-less'} file (use {kinds} or a folder)")
    if config is not None:
        raise TaskError(f"task hf: config={config} names a configuration of a hub data set or folder, not of a file")
    loaded = load_with_datasets(source, failure, builder, data_files=str(path))
    return dataset_splits(loaded, source, required, split)


class HFTask(JsonlTask):
    name = "hf"
    source_form = "DATASET"
    option_forms = ("split=S", "question=FIELD", "answer=FIELD", "config=NAME")

    def load(self) -> Splits:
        split, config = self.options["split"], self.options["config"]
        if is_local(self.source):
            return load_local(self.source, self.fields, split, config)
        return load_hub(self.source, config, self.fields, split)


class RowsTask(JsonlTask):
    """`grpolab.train(dataset=...)`: rows passed in Python, a list of dicts, a `datasets.Dataset` (one split:
    every tenth row held out) or a `DatasetDict` (train and test used as they are), with `question` and
    `answer` fields, scored as `hf:` and `jsonl:` are. config.yaml records it as `task: python:dataset`."""

    name = "dataset"

    def __init__(self, dataset, question: str = "question", answer: str = "answer"):
        super().__init__(f"python:dataset,question={question},answer={answer}")
        self.dataset = dataset

    def load(self) -> Splits:
        data = self.dataset
        if isinstance(data, list):
            return split_rows(checked_rows(data, self.fields))
        if hasattr(data, "column_names") and hasattr(data, "to_list"):  # a datasets.Dataset: one split
            data = {"train": data}
        if isinstance(data, dict) or hasattr(data, "keys"):  # a DatasetDict (or a dict of Datasets)
            return dataset_splits(data, "dataset", self.fields)
        raise TaskError(f"dataset: got a {type(data).__name__}; pass a list of dicts, a Dataset or a DatasetDict")


def checked_rows(rows: list, required: tuple[str, ...]) -> list[dict]:
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TaskError(f"dataset row {index}: expected a dict, got {type(row).__name__}")
        missing = [field for field in required if field not in row]
        if missing:
            raise TaskError(f"dataset row {index}: missing field(s) {', '.join(missing)}")
    if not rows:
        raise TaskError("dataset: no rows")
    return rows
