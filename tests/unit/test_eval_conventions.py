"""The conventions eval, train and distill share: one eval.json layout, run folders named as models, distill's
`rejection.*` keys (the old `sample.*` refused in one line)."""

from __future__ import annotations

import pytest
import yaml

from grpolab.config import load_config
from grpolab.errors import ConfigError, ModelError
from grpolab.model.loading import resolve_model_path, run_folder
from grpolab.rollout.evaluation import eval_summary, training_eval_summary
from grpolab.stages.distill import DistillConfig, refuse_old_keys
from grpolab.stages.evaluate import EvalRunConfig, with_run_settings
from grpolab.training.metrics import summary_line


def test_eval_summary_leads_with_task_n_and_accuracy():
    summary = eval_summary("arithmetic", 4, 0.25, model="tiny-random", k=2, **{"pass@1": 0.5})
    assert list(summary) == ["task", "n", "accuracy", "model", "k", "pass@1"]
    assert summary["accuracy"] == 0.25


@pytest.mark.parametrize(
    "results, expected",
    [
        (
            {"n": 4, "before": {"accuracy": 0.25}, "after": {"accuracy": 0.5}},
            {
                "task": "t",
                "n": 4,
                "before": {"task": "t", "n": 4, "accuracy": 0.25},
                "after": {"task": "t", "n": 4, "accuracy": 0.5},
            },
        ),
        ({"n": 4, "after": {"accuracy": 1.0}}, {"task": "t", "n": 4, "after": {"task": "t", "n": 4, "accuracy": 1.0}}),
        ({"n": 0}, {"task": "t", "n": 0}),
    ],
)
def test_training_eval_summary_holds_one_eval_summary_per_evaluation(results, expected):
    assert training_eval_summary("t", results) == expected


def test_the_summary_line_reads_old_and_new_train_layouts(tmp_path):
    old = {"n": 4, "before": {"accuracy": 0.25}, "after": {"accuracy": 0.5}}
    new = training_eval_summary("t", old)
    assert summary_line(old, tmp_path) == summary_line(new, tmp_path)
    assert "before 0.250 -> after 0.500" in summary_line(new, tmp_path)


@pytest.mark.parametrize(
    "keys, example",
    [
        (["sample.threshold"], "rejection.threshold"),
        (["train.epochs", "sample.k"], "rejection.k"),
        (["sample"], "rejection.threshold"),
    ],
)
def test_distill_refuses_the_old_sample_section(keys, example):
    with pytest.raises(ConfigError) as error:
        refuse_old_keys(keys)
    assert str(error.value) == f"distill: sample.* is now rejection.* (e.g. {example}=...)"


def test_distill_takes_rejection_keys():
    refuse_old_keys(["rejection.threshold", "samples", "teacher"])  # nothing refused
    config = load_config(None, ["rejection.k=3", "rejection.threshold=0.5"], root=DistillConfig)
    assert config.rejection.k == 3 and config.rejection.threshold == 0.5
    with pytest.raises(ConfigError, match="rejection.k: got 0"):
        load_config(None, ["rejection.k=0"], root=DistillConfig)


def make_run(folder, settings: dict, final: bool = True):
    folder.mkdir()
    (folder / ".grpolab-run").write_text("")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    if final:
        (folder / "final").mkdir()
        (folder / "final" / "config.json").write_text("{}")
    return folder


def test_a_run_folder_stands_for_its_final_model(tmp_path):
    run = make_run(tmp_path / "run", {"task": "arithmetic"})
    assert run_folder(str(run)) == run
    assert resolve_model_path(str(run)) == str(run / "final")
    assert resolve_model_path(str(run / "final")) == str(run / "final")  # a model folder is itself
    unfinished = make_run(tmp_path / "unfinished", {"task": "arithmetic"}, final=False)
    with pytest.raises(ModelError, match="is a run folder without final/"):
        resolve_model_path(str(unfinished))


@pytest.mark.parametrize(
    "overrides, task, template",
    [
        ([], "jsonl:x.jsonl", "r1_zero"),  # the run's task and template
        (["task=arithmetic"], "arithmetic", "default"),  # a task given: its default template
        (["task=arithmetic", "template=r1_zero"], "arithmetic", "r1_zero"),
        (["template=default"], "jsonl:x.jsonl", "default"),
    ],
)
def test_eval_of_a_run_folder_takes_the_runs_task_and_template(tmp_path, overrides, task, template):
    run = make_run(tmp_path / "run", {"task": "jsonl:x.jsonl", "template": "r1_zero"})
    config = with_run_settings(load_config(None, [f"model={run}", *overrides], root=EvalRunConfig))
    assert (config.task, config.template) == (task, template)


def test_eval_of_a_model_defaults_to_arithmetic():
    config = with_run_settings(load_config(None, ["model=tiny-random"], root=EvalRunConfig))
    assert (config.task, config.template, config.rows) == ("arithmetic", "default", "held_out")
    with pytest.raises(ConfigError, match="rows: got 'every'"):
        load_config(None, ["rows=every"], root=EvalRunConfig)
