"""The `hf:` task: local parquet, CSV, JSON and JSON-lines files and folders read through `datasets`, its
splits and field options, answer checking, the hub path (with `load_dataset` stood in for), and its one-line
errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from itertools import islice

import pytest

from grpolab.errors import TaskError
from grpolab.tasks import get_task
from grpolab.tasks.hf import is_local

datasets = pytest.importorskip("datasets")
parquet = pytest.importorskip("pyarrow.parquet")

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(20)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """A fresh `datasets` cache per test: every test reads its own files, and none writes to the home folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def write_parquet(path, rows):
    import pyarrow

    parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_csv(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_json_array(path, rows):
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize(
    "name, write",
    [("d.parquet", write_parquet), ("d.csv", write_csv), ("d.jsonl", write_jsonl), ("d.json", write_json_array)],
)
def test_a_file_holds_out_every_tenth_row_and_trains_on_the_rest(tmp_path, name, write):
    task = get_task(f"hf:{write(tmp_path / name, ROWS)}")
    held_out = task.eval_examples(2)
    assert [row["question"] for row in held_out] == [ROWS[0]["question"], ROWS[10]["question"]]
    trained = {row["question"] for row in islice(task.train_stream(seed=1), 54)}
    assert trained == {row["question"] for index, row in enumerate(ROWS) if index % 10}
    with pytest.raises(TaskError, match="eval.n: task hf has 2 held-out examples, got 3"):
        task.eval_examples(3)


def test_a_folder_uses_its_train_and_test_files_as_they_are_and_split_picks_one(tmp_path):
    folder = tmp_path / "data"  # not tmp_path itself: the cache folder in it would be read as data
    folder.mkdir()
    write_parquet(folder / "train.parquet", ROWS[:12])
    write_parquet(folder / "test.parquet", ROWS[12:15])
    task = get_task(f"hf:{folder}")
    assert task.eval_examples(3) == ROWS[12:15]
    assert {row["question"] for row in islice(task.train_stream(0), 40)} == {row["question"] for row in ROWS[:12]}
    only_train = get_task(f"hf:{folder},split=train")
    assert only_train.eval_examples(2) == [ROWS[0], ROWS[10]]
    assert len(only_train.splits().train) == 10
    only_test = get_task(f"hf:{folder},split=test")
    assert only_test.eval_examples(1) == [ROWS[12]] and only_test.splits().train == ROWS[13:15]


def test_field_options_name_the_question_and_answer_and_answers_are_checked(tmp_path):
    rows = [{"prompt": "Capital of France?", "target": "Paris"}, {"prompt": "2+2?", "target": 4}] * 5
    task = get_task(f"hf:{write_csv(tmp_path / 'd.csv', rows)},question=prompt,answer=target")
    assert task.fields == ("prompt", "target")
    france, four = task.eval_examples(1)[0], task.splits().train[0]
    assert task.question(france) == "Capital of France?" and task.reference(four) == "4"
    correctness = task.reward_functions()["correctness"]
    assert correctness("<answer> paris </answer>", france) == 1.0 and task.is_correct("The answer is 4", four)
    assert correctness("<answer>Lyon</answer>", france) == 0.0 and not task.is_correct("The answer is 5", four)
    assert task.extract_answer("<think>hm</think><answer>Paris</answer>") == "Paris"


def test_rows_load_on_first_use_and_datasets_is_imported_only_then(tmp_path):
    task = get_task(f"hf:{tmp_path / 'not-yet.parquet'}")  # nothing is read yet
    write_parquet(tmp_path / "not-yet.parquet", ROWS)
    assert task.eval_examples(1) == [ROWS[0]]
    probe = "import sys; from grpolab.tasks import get_task; get_task('hf:x.parquet'); print('datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "source, local",
    [
        ("openai/gsm8k", False),
        ("gsm8k", False),
        ("HuggingFaceH4/MATH-500", False),
        ("./data", True),
        ("/data/rows", True),
        ("~/rows", True),
        ("data/rows/2024", True),
        ("rows.parquet", True),
        ("rows.CSV", True),
    ],
)
def test_local_paths_are_told_from_hub_ids(source, local):
    assert is_local(source) is local


def test_an_existing_folder_is_local_even_when_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_local("owner/name")


def test_a_hub_id_loads_through_load_dataset_with_its_config_and_split(monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        splits = {"train": datasets.Dataset.from_list(ROWS[:5]), "validation": datasets.Dataset.from_list(ROWS)}
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = get_task("hf:owner/name,config=main,split=validation")
    assert task.eval_examples(2) == [ROWS[0], ROWS[10]] and len(task.splits().train) == 18
    assert calls == [(("owner/name", "main"), {})]
    both = get_task("hf:owner/name")  # no test split: all splits together, every tenth row held out
    assert len(both.splits().held_out) == 3 and len(both.splits().train) == 22


def test_a_hub_failure_is_one_line(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(TaskError) as error:
        get_task("hf:owner/name").eval_examples(1)
    assert str(error.value) == (
        "owner/name: cannot load it from the hub; pass a local file "
        "(ConnectionError: Couldn't reach 'owner/name' on the Hub (LocalEntryNotFoundError))"
    )


def unreadable_parquet(tmp_path):
    (tmp_path / "d.parquet").write_text("not parquet")
    return f"hf:{tmp_path / 'd.parquet'}"


def unreadable_csv(tmp_path):
    (tmp_path / "d.csv").write_text('question,answer\n"never closed\n')
    return f"hf:{tmp_path / 'd.csv'}"


def empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return f"hf:{tmp_path / 'empty'}"


def text_file(tmp_path):
    (tmp_path / "d.txt").write_text("What is 1 + 1?")
    return f"hf:{tmp_path / 'd.txt'}"


def with_parquet(options):
    return lambda tmp_path: f"hf:{write_parquet(tmp_path / 'd.parquet', ROWS)}{options}"


@pytest.mark.parametrize(
    "spec, message",
    [
        (lambda tmp_path: "hf:", r"^task hf needs a path: task=hf:DATASET\[,split=S\]\[,question=FIELD\]"),
        (with_parquet(",prompt=q"), r"option 'prompt=q' is not split=S, question=FIELD, answer=FIELD or config=NAME"),
        (with_parquet(",split="), "option 'split=' is not"),
        (
            with_parquet(",answer=target"),
            r"d.parquet split train: missing field\(s\) target \(columns: question, answer\)",
        ),
        (with_parquet(",split=test"), r"d.parquet: no split 'test' \(available: train\)"),
        (with_parquet(",config=main"), "config=main names a configuration of a hub data set or folder, not of a file"),
        (lambda tmp_path: f"hf:{tmp_path / 'nope.parquet'}", "nope.parquet: no such file or folder"),
        (lambda tmp_path: f"hf:{tmp_path / 'nope'}", "nope: no such file or folder"),
        (unreadable_parquet, r"d.parquet: the datasets library cannot read it \(ArrowInvalid: Parquet magic bytes"),
        (unreadable_csv, r"d.csv: the datasets library cannot read it \(ParserError: "),
        (empty_folder, r"empty: the datasets library cannot read it \(EmptyDatasetError: "),
        (text_file, r"d.txt: cannot read a .txt file \(use .parquet, .json, .jsonl, .csv or a folder\)"),
    ],
)
def test_errors_are_one_line_task_errors(tmp_path, spec, message):
    with pytest.raises(TaskError, match=message) as error:
        get_task(spec(tmp_path)).eval_examples(1)
    assert "\n" not in str(error.value)


def test_a_missing_datasets_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    task = get_task(f"hf:{write_jsonl(tmp_path / 'd.jsonl', ROWS)}")
    with pytest.raises(TaskError, match=r"needs the datasets package: pip install datasets \(or grpolab\[hf\]\)$"):
        task.eval_examples(1)


def test_datasets_logs_and_progress_bars_are_restored_after_a_load(tmp_path):
    verbosity, bars_off = datasets.logging.get_verbosity(), datasets.utils.are_progress_bars_disabled()
    get_task(f"hf:{write_parquet(tmp_path / 'd.parquet', ROWS)}").eval_examples(1)
    with pytest.raises(TaskError):
        get_task(unreadable_csv(tmp_path)).eval_examples(1)
    assert datasets.logging.get_verbosity() == verbosity
    assert datasets.utils.are_progress_bars_disabled() == bars_off
