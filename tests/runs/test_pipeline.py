import json
import subprocess
import sys

import pytest
import yaml

from grpolab.cli import main
from grpolab.config import load_config
from grpolab.errors import ConfigError
from grpolab.stages.pipeline import PipelineConfig

TINY = {
    "model": "tiny-random",
    "stages": [
        {
            "name": "rl",
            "kind": "grpo",
            "model": "base",
            "settings": {
                "train.max_steps": 1,
                "rollout.prompts_per_step": 2,
                "rollout.group_size": 2,
                "rollout.max_new_tokens": 4,
                "eval.n": 0,
            },
        },
        {
            "name": "samples",
            "kind": "sample",
            "settings": {
                "rejection.prompts": 2,
                "rejection.k": 2,
                "rejection.max_new_tokens": 4,
                "rejection.threshold": 0,
                "rejection.keep_truncated": True,
            },
        },
        {
            "name": "student",
            "kind": "distill",
            "data": "samples",
            "settings": {
                "method": "token",
                "top_k": 4,
                "train.max_steps": 1,
                "student.model": "",
                "student.hidden_size": 32,
            },
        },
        {"name": "tuned", "kind": "sft", "model": "student", "settings": {"train.max_steps": 1}},
    ],
    "compare": {"n": 2, "k": 2, "max_new_tokens": 4},
}


def write_config(tmp_path, config=TINY):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "run")}))
    return path


def test_pipeline_runs_end_to_end_then_resumes(tmp_path):
    path = write_config(tmp_path)
    first = subprocess.run([sys.executable, "-m", "grpolab", "pipeline", str(path)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    for stage in ("rl", "samples", "student", "tuned"):
        assert (run / "stages" / f"{stage}.done.json").exists()
    assert (run / "stages" / "samples" / "data.jsonl").exists()
    assert yaml.safe_load((run / "stages" / "student" / "config.yaml").read_text())["teacher"].endswith("rl/final")
    assert yaml.safe_load((run / "stages" / "tuned" / "config.yaml").read_text())["model"].endswith("student/final")
    summary = json.loads((run / "comparison.json").read_text())
    assert [row["label"] for row in summary["rows"]] == ["base", "rl", "student", "tuned"]
    assert all({"accuracy", "pass@1", "maj@k", "pass@k"} <= set(row) for row in summary["rows"])
    assert "accuracy" in (run / "comparison.md").read_text()
    # a second invocation skips every completed stage and evaluation
    markers = {p: p.stat().st_mtime_ns for p in run.rglob("*.done.json")}
    second = subprocess.run([sys.executable, "-m", "grpolab", "pipeline", str(path)], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already completed, skipped") == 8
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.done.json")} == markers


def test_an_unfinished_stage_is_run_again(tmp_path):
    config = {**TINY, "stages": TINY["stages"][1:2], "compare": {"n": 1, "models": ["base"], "max_new_tokens": 2}}
    path = write_config(tmp_path, config)
    assert main(["pipeline", str(path)]) == 0
    run = tmp_path / "run"
    (run / "stages" / "samples.done.json").unlink()  # as if it had crashed before finishing
    (run / "stages" / "samples" / "summary.json").unlink()
    assert main(["pipeline", str(path)]) == 0
    assert (run / "stages" / "samples" / "summary.json").exists()


def test_changed_settings_need_a_new_folder_or_overwrite(tmp_path, capsys):
    config = {**TINY, "stages": [], "compare": {"n": 1, "max_new_tokens": 2}}
    path = write_config(tmp_path, config)
    assert main(["pipeline", str(path)]) == 0
    assert main(["pipeline", str(path), "compare.n=2"]) == 2
    assert "holds a pipeline with other settings" in capsys.readouterr().err
    assert main(["pipeline", str(path), "compare.n=2", "overwrite=true"]) == 0


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "a", "kind": "sft"}], "no data"),
        ([{"name": "a", "kind": "sample"}, {"name": "b", "kind": "sft", "model": "a"}], "stage 'a' makes no model"),
        ([{"name": "a", "kind": "grpo"}, {"name": "a", "kind": "grpo"}], "must be a new, non-empty name"),
        ([{"name": "a", "kind": "grpo", "settings": {"output_dir": "x"}}], "'output_dir' is set by the pipeline"),
        ([{"name": "a", "kind": "grpo", "settings": {"train.steps": 1}}], "unknown config key 'train.steps'"),
        ([{"name": "a", "kind": "magic"}], "stages.0.kind: got 'magic'"),
    ],
)
def test_bad_pipelines_fail_before_any_work(tmp_path, capsys, stages, message):
    path = write_config(tmp_path, {**TINY, "stages": stages})
    assert main(["pipeline", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "stages").exists()


def test_default_pipeline_is_r1s_small_model_comparison():
    config = load_config(None, [], root=PipelineConfig)
    assert config.model == "smollm2-135m" and config.task == "arithmetic"
    assert [(s.name, s.kind, s.model) for s in config.stages] == [
        ("grpo", "grpo", "base"),
        ("samples", "sample", "grpo"),
        ("pruned", "prune", "base"),
        ("sequence", "distill", "grpo"),
        ("token", "distill", "grpo"),
        ("on_policy", "distill", "grpo"),
        ("student_rl", "grpo", "pruned"),
    ]
    assert all(s.settings["student.model"] == "pruned" for s in config.stages if s.kind == "distill")
    with pytest.raises(ConfigError, match="compare.models: 'x' is neither base nor a stage name"):
        load_config(None, ["compare.models=[x]"], root=PipelineConfig)


def test_quick_pipeline_makes_the_whole_table_on_tiny_random(tmp_path):
    run = tmp_path / "quick"
    assert main(["pipeline", "--quick", f"output_dir={run}"]) == 0
    rows = {row["label"]: row for row in json.loads((run / "comparison.json").read_text())["rows"]}
    assert list(rows) == ["base", "grpo", "pruned", "sequence", "token", "on_policy", "student_rl"]
    kept = json.loads((run / "stages" / "pruned" / "final" / "prune_origin.json").read_text())["kept_layers"]
    assert kept == [0]
    for name in ("sequence", "token", "on_policy"):  # each student starts from the pruned model
        assert yaml.safe_load((run / "stages" / name / "config.yaml").read_text())["teacher"].endswith("grpo/final")
        assert json.loads((run / "stages" / name / "final" / "config.json").read_text())["num_hidden_layers"] == 1
    samples = (run / "stages" / "samples" / "data.jsonl").read_text().count("\n")
    assert rows["sequence"]["teacher_samples"] == rows["token"]["teacher_samples"] == samples
    assert rows["on_policy"]["teacher_samples"] == 2 * 2 * 2  # 2 steps of 2 prompts x 2 completions, scored
    assert rows["base"]["train_seconds"] is None and rows["student_rl"]["train_seconds"] > 0
    assert "teacher_samples" in (run / "comparison.md").read_text()


@pytest.mark.slow
def test_default_pipeline_shows_the_rl_model_above_the_base(tmp_path):
    """The real thing: SmolLM2-135M on this CPU, about 30 minutes."""
    assert main(["pipeline", f"output_dir={tmp_path}/run"]) == 0
    rows = {row["label"]: row for row in json.loads((tmp_path / "run" / "comparison.json").read_text())["rows"]}
    assert rows["grpo"]["accuracy"] > rows["base"]["accuracy"]
