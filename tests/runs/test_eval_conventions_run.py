"""`grpolab eval` and `grpolab distill` as a user types them: a run folder as the model, every row of a test
file, distill's `rejection.*` keys, and train's and eval's eval.json in one layout."""

from __future__ import annotations

import json

import pytest
import yaml

from grpolab.cli import main
from tests.conftest import TINY

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(25)]
EVAL = ["max_new_tokens=2", "batch_size=25"]  # a short answer is enough to be scored


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def read_json(path):
    return json.loads(path.read_text())


def test_a_run_folder_is_evaluated_on_its_final_model_task_and_template(tmp_path, rows_file):
    run = tmp_path / "run"
    tiny = [arg for arg in TINY if not arg.startswith("reward.weights.format")]  # jsonl has no format reward
    train = [*tiny, "train.max_steps=1", "eval.n=2", "log.report=false", "--quiet"]
    assert main(["train", *train, f"task=jsonl:{rows_file}", "template=r1_zero", f"output_dir={run}"]) == 0
    assert main(["eval", f"model={run}", "n=2", *EVAL, f"output_dir={tmp_path}/e"]) == 0
    config = yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())
    assert (config["task"], config["template"]) == (f"jsonl:{rows_file}", "r1_zero")
    evaluated, trained = read_json(tmp_path / "e" / "eval.json"), read_json(run / "eval.json")
    # one layout: eval's summary, and train's before / after, each lead with task, n, accuracy
    assert list(evaluated)[:3] == ["task", "n", "accuracy"] and evaluated["model"] == str(run)
    assert (trained["task"], trained["n"]) == (evaluated["task"], evaluated["n"])
    for when in ("before", "after"):
        assert list(trained[when]) == ["task", "n", "accuracy"] and trained[when]["task"] == evaluated["task"]
    # task= given: that task, with its default template
    assert main(["eval", f"model={run}", "task=arithmetic", "n=2", *EVAL, f"output_dir={tmp_path}/a"]) == 0
    config = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert (config["task"], config["template"]) == ("arithmetic", "default")
    # the other commands that take a model take the run folder too
    sample = ["rejection.prompts=1", "rejection.k=2", "rejection.max_new_tokens=2", f"task=jsonl:{rows_file}"]
    assert main(["sample", f"model={run}", *sample, f"output_dir={tmp_path}/s"]) == 0


def test_a_run_folder_without_final_is_refused_in_one_line(tmp_path, capsys):
    assert main(["eval", "model=tiny-random", "n=1", *EVAL, f"output_dir={tmp_path}/first"]) == 0
    capsys.readouterr()
    assert main(["eval", f"model={tmp_path}/first", "n=1", f"output_dir={tmp_path}/second"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a run folder without final/" in err[0]
    assert not (tmp_path / "second").exists()


def test_rows_all_scores_every_row_of_a_test_file(tmp_path, rows_file, capsys):
    task = f"task=jsonl:{rows_file}"
    assert main(["eval", "model=tiny-random", task, "n=3", *EVAL, f"output_dir={tmp_path}/held"]) == 0
    assert read_json(tmp_path / "held" / "eval.json")["n"] == 3  # every tenth row: 0, 10, 20
    assert main(["eval", "model=tiny-random", task, "rows=all", *EVAL, f"output_dir={tmp_path}/all"]) == 0
    summary = read_json(tmp_path / "all" / "eval.json")
    assert (summary["n"], summary["rows"]) == (25, "all")
    records = [json.loads(line) for line in (tmp_path / "all" / "samples.jsonl").read_text().splitlines()]
    questions = [record["question"] for record in records]
    assert sorted(questions) == sorted(row["question"] for row in ROWS)
    assert questions[:3] == [ROWS[0]["question"], ROWS[10]["question"], ROWS[20]["question"]]  # held-out first
    capsys.readouterr()
    # more held-out problems than the split has: one line naming n and the way to every row
    assert main(["eval", "model=tiny-random", task, "n=4", f"output_dir={tmp_path}/many"]) == 2
    assert "n: task jsonl has 3 held-out examples, got 4 (rows=all" in capsys.readouterr().err
    # a generated task has no data file to score every row of
    assert main(["eval", "model=tiny-random", "rows=all", f"output_dir={tmp_path}/gen"]) == 2
    assert "rows: 'all' needs a task with a data file" in capsys.readouterr().err


def test_distill_refuses_the_old_sample_keys_in_one_line(tmp_path, capsys):
    message = "distill: sample.* is now rejection.* (e.g. rejection.threshold=...)"
    assert main(["distill", "teacher=tiny-random", "sample.threshold=0", f"output_dir={tmp_path}/d"]) == 2
    assert capsys.readouterr().err.strip().endswith(message)
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({"teacher": "tiny-random", "sample": {"threshold": 0}}))
    assert main(["distill", str(config), f"output_dir={tmp_path}/d"]) == 2
    assert capsys.readouterr().err.strip().endswith(message)
    pipeline = tmp_path / "pipeline.yaml"
    stage = {"name": "student", "kind": "distill", "data": "x.jsonl", "settings": {"sample.threshold": 0}}
    pipeline.write_text(yaml.safe_dump({"model": "tiny-random", "stages": [stage], "output_dir": str(tmp_path / "p")}))
    assert main(["pipeline", str(pipeline)]) == 2
    assert f"stages.0 (student): {message}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "p" / "stages").exists()
