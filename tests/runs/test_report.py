"""The run report, TensorBoard events, samples.jsonl and `grpolab chat` on a real (tiny-random) training run,
plus the report's error cases and its pure helpers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpolab.cli import main
from grpolab.report.writer import best_and_worst, fenced, load_run, read_jsonl, window_mean, write_report

PLOTS = ["reward", "accuracy", "eval", "kl", "entropy", "completion_length", "step_time"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> tuple[Path, str]:
    """A 3-step tiny-random run through the CLI (stdout is a pipe, so progress comes as plain lines)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    command = [
        sys.executable, "-m", "grpolab", "train", "model=tiny-random", "train.max_steps=3",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.engine=hf", "rollout.max_new_tokens=16",
        "eval.n=8", "eval.max_new_tokens=16",
        "log.samples_every=2", f"output_dir={run_dir}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir, result.stdout


def png_ok(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_training_writes_report_and_plots(report_run):
    run_dir, stdout = report_run
    report = (run_dir / "report.md").read_text()
    for name in PLOTS:
        assert png_ok(run_dir / "plots" / f"{name}.png"), name
        assert f"(plots/{name}.png)" in report
    assert "| steps recorded | 3 of 3 |" in report
    assert "held-out accuracy, greedy (n=8)" in report
    assert "## Completions" in report
    assert f"report: {run_dir / 'report.md'}" in stdout


def test_plain_progress_lines_when_not_a_terminal(report_run):
    _, stdout = report_run
    lines = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    for field in ["reward", "rewards/correctness", "accuracy", "kl", "entropy", "length", "clip low/high", "tok/s"]:
        assert f"| {field} " in lines[0]
    assert "| time/generate " in lines[0] and "ETA" in lines[0]


def test_tensorboard_events_hold_the_scalars_and_samples(report_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = report_run
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    scalars = events.Tags()["scalars"]
    for key in ["reward_mean", "kl", "entropy", "rewards/correctness", "time/generate", "tokens_per_second"]:
        assert key in scalars
    logged = [(e.step, e.value) for e in events.Scalars("reward_mean")]
    assert logged == [(r["step"], pytest.approx(r["reward_mean"])) for r in metrics]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    for when in ("before", "after"):
        logged = [(e.step, e.value) for e in events.Scalars(f"eval/accuracy_{when}")]
        assert logged == [(3, pytest.approx(evaluation[when]["accuracy"]))]
    assert [e.step for e in events.Tensors("samples/text_summary")] == [1, 2, 3]


def test_samples_jsonl_holds_every_completion_of_the_first_prompts(report_run):
    run_dir, _ = report_run
    rows = read_jsonl(run_dir / "samples.jsonl")
    assert sorted({row["step"] for row in rows}) == [1, 2, 3]  # first, every 2nd, last
    assert len(rows) == 3 * 2 * 4  # steps x samples_prompts x group_size
    row = rows[0]
    assert set(row) >= {"question", "answer", "completion", "reward", "rewards", "correct", "finish_reason"}
    assert row["reward"] == sum(v for v in row["rewards"].values() if v is not None)  # weights are all 1 here


def test_report_command_rewrites_the_report(report_run, capsys):
    run_dir, _ = report_run
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.md")
    assert (run_dir / "report.md").is_file()


def make_second_run(run_dir: Path, target: Path) -> Path:
    """A copy of the tiny run with shifted rewards and another beta, standing in for a second training run."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("final", "plots", "report.md", "events.*"))
    metrics = read_jsonl(target / "metrics.jsonl")
    for record in metrics:
        record["reward_mean"] += 0.5
    (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["grpo"]["beta"] = 0.0
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


def test_overlay_of_two_runs(report_run, tmp_path, capsys):
    run_dir, _ = report_run
    other = make_second_run(run_dir, tmp_path / "other")
    output = tmp_path / "comparison"
    assert main(["report", str(run_dir), str(other), "--output", str(output)]) == 0
    report = (output / "report.md").read_text()
    assert report.startswith("# Comparison of 2 runs")
    assert "| key | tiny | other |" in report and "| grpo.beta | 0.04 | 0.0 |" in report
    for name in PLOTS:
        assert png_ok(output / "plots" / f"{name}.png"), name
    assert not (other / "report.md").exists()  # the runs' own folders are left alone


def test_overlay_default_output_is_a_new_folder_beside_the_first_run(report_run, tmp_path):
    run_dir, _ = report_run
    first = make_second_run(run_dir, tmp_path / "a")
    second = make_second_run(run_dir, tmp_path / "b")
    assert write_report([first, second]) == tmp_path / "compare-a-vs-b" / "report.md"


def test_overlay_never_writes_into_a_run_folder(report_run, tmp_path, capsys):
    run_dir, _ = report_run
    other = make_second_run(run_dir, tmp_path / "other")
    before = (run_dir / "report.md").read_text()
    assert main(["report", str(run_dir), str(other), "--output", str(run_dir)]) == 2
    assert "is a run folder" in capsys.readouterr().err
    assert (run_dir / "report.md").read_text() == before


def test_chat_answers_one_prompt_from_a_run_folder(report_run, capsys):
    run_dir, _ = report_run
    args = ["chat", str(run_dir), "prompt=What is 2 + 3?", "max_new_tokens=8", "temperature=1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.strip()  # (greedy decoding of this random model stops at once) some text, the same each time
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_chat_interactive_keeps_the_conversation(report_run, monkeypatch, capsys):
    import io

    run_dir, _ = report_run
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\n/reset\nagain\n"))
    assert main(["chat", str(run_dir / "final"), "max_new_tokens=4", "temperature=1.0"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["chat", "/no/such/model", "prompt=hi"], "does not exist"),
        (["chat", "tiny-random", "prompt=hi", "temperature=-1"], "temperature: got -1"),
        (["chat", "tiny-random", "prompt=hi", "max_new_tokens=0"], "max_new_tokens: got 0"),
    ],
)
def test_chat_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_chat_uses_the_system_prompt_of_the_run_task(report_run):
    from argparse import Namespace

    from grpolab.commands.chat import system_prompt
    from grpolab.tasks import get_task

    run_dir, _ = report_run
    expected = get_task("arithmetic").system_prompt
    assert system_prompt(Namespace(model=str(run_dir), system="", task="")) == expected
    assert system_prompt(Namespace(model="tiny-random", system="", task="")) is None
    assert system_prompt(Namespace(model="tiny-random", system="", task="arithmetic")) == expected
    assert system_prompt(Namespace(model=str(run_dir), system="Be brief.", task="")) == "Be brief."
    assert system_prompt(Namespace(model=str(run_dir), system="none", task="")) is None


def test_chat_engine_not_built_yet(capsys):
    import importlib.util

    if importlib.util.find_spec("grpolab.engine.grpolab_engine") is not None:
        pytest.skip("the grpolab engine exists in this checkout")
    assert main(["chat", "tiny-random", "prompt=hi", "engine=grpolab"]) == 2
    assert "--engine grpolab: not available" in capsys.readouterr().err


def test_chat_on_an_unfinished_run_folder(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["chat", str(tmp_path), "prompt=hi"]) == 2
    assert "without a final/ model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no metrics.jsonl"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "holds no training steps yet"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1}\n\n{oops\n{"step": 3}\n')), "line 3"),
        (
            lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1}\n'), (d / "eval.json").write_text("{")),
            "eval.json: cannot be parsed",
        ),
    ],
)
def test_report_errors_are_one_line(tmp_path, capsys, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "report.md").exists()


def test_report_of_a_run_cut_off_mid_line(tmp_path):
    """A killed run: no eval.json, no samples, and half a metrics line; the report covers what is there."""
    record = {"step": 1, "reward_mean": 0.5, "accuracy": 0.5, "kl": 0.0, "entropy": 1.0, "completion_len_mean": 3.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n" + '{"step": 2, "rew')
    assert len(load_run(tmp_path).metrics) == 1
    report = write_report([tmp_path]).read_text()
    assert "(plots/eval.png)" not in report and "(plots/step_time.png)" not in report
    assert "No samples.jsonl" in report
    assert png_ok(tmp_path / "plots" / "reward.png")


def test_window_mean_uses_first_and_last_tenth():
    assert window_mean([1.0, 2.0, 3.0]) == (1.0, 3.0)
    values = [float(i) for i in range(20)]  # tenth = 2 steps
    assert window_mean(values) == (0.5, 18.5)
    assert window_mean([None, None]) == (None, None)


def sample(step, reward, text):
    return {"step": step, "reward": reward, "question": "q", "completion": text}


def test_best_and_worst():
    samples = [sample(1, 1.0, "a"), sample(2, 1.0, "b"), sample(2, 0.0, "c"), sample(3, 0.5, "d"), sample(3, 1.0, "a")]
    best, worst = best_and_worst(samples, k=2)
    assert [(s["step"], s["completion"]) for s in best] == [(3, "a"), (2, "b")]  # "a" once, at its latest step
    assert [s["completion"] for s in worst] == ["c", "d"]
    assert best_and_worst([sample(1, 0.0, "x"), sample(2, 0.0, "y")]) == ([], [])


def test_fence_is_longer_than_backticks_inside():
    assert fenced("plain") == "```text\nplain\n```"
    assert fenced("a ```` b").startswith("`````text\n")
