"""What a user sees of a tiny-random run through the command line: held-out accuracy every `eval.every` steps
(metrics.jsonl, TensorBoard, report), why training stopped (summary line, eval.json, report), and `grpolab chat`
printing its reply as it is generated."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from grpolab.cli import main
from tests.conftest import ROOT, TINY, run_cli


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("view") / "every"
    result = run_cli("train", *TINY, "eval.every=1", f"output_dir={run_dir}", check=True)
    return run_dir, result.stdout


def test_eval_every_logs_held_out_accuracy_each_step(evaluated_run):
    run_dir, stdout = evaluated_run
    steps = records(run_dir)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(0.0 <= r["eval/accuracy"] <= 1.0 for r in steps)
    assert "| held-out " in next(line for line in stdout.splitlines() if line.startswith("step 1/3"))
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["after"]["accuracy"] == steps[-1]["eval/accuracy"]  # the last step's weights, scored once


def test_eval_every_reaches_tensorboard_and_the_report(evaluated_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = evaluated_run
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("eval/accuracy")]
    assert logged == [(r["step"], pytest.approx(r["eval/accuracy"])) for r in records(run_dir)]
    report = (run_dir / "report.md").read_text()
    assert "| held-out accuracy during training (eval.every) |" in report
    assert "| stop reason | max_steps |" in report
    assert (run_dir / "plots" / "accuracy.png").is_file()


def test_stop_reason_max_steps(evaluated_run):
    run_dir, stdout = evaluated_run
    assert json.loads((run_dir / "eval.json").read_text())["stop_reason"] == "max_steps"
    assert "stop reason: max_steps; held-out accuracy (n=8)" in stdout


def test_stop_reason_time_budget(tmp_path):
    run_dir = tmp_path / "budget"
    args = [*TINY, "train.max_steps=50", "train.max_minutes=0.001", "eval.n=2", "log.report=false"]
    result = run_cli("train", *args, f"output_dir={run_dir}", check=True)
    assert [r["step"] for r in records(run_dir)] == [1]
    assert json.loads((run_dir / "eval.json").read_text())["stop_reason"] == "time_budget"
    assert "stop reason: time_budget;" in result.stdout


def test_stop_reason_signal_is_said_and_the_run_can_resume(tmp_path):
    run_dir = tmp_path / "signal"
    args = [*TINY, "train.max_steps=200", "eval.n=2", "log.report=false", f"output_dir={run_dir}"]
    command = [sys.executable, "-m", "grpolab", "train", *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and metrics.read_text()):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "(stop reason: signal); checkpoint saved" in out and f"grpolab train --resume {run_dir}" in out
    assert not (run_dir / "final").exists() and not (run_dir / "eval.json").exists()


def test_stop_reason_non_finite_is_in_the_error_line(tmp_path):
    args = [*TINY, "eval.n=2", "train.max_nonfinite_steps=1", "train.learning_rate=1e300", "log.report=false"]
    result = run_cli("train", *args, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stop reason: non_finite; step " in lines[0] and "non-finite loss" in lines[0]


@pytest.mark.parametrize("engine", ["grpolab", "hf"])
def test_chat_streams_its_reply(engine, monkeypatch, capsys):
    from argparse import Namespace

    from grpolab.commands import chat
    from grpolab.engine import SamplingParams

    pieces = []
    monkeypatch.setattr(chat, "print_piece", lambda text: pieces.append(text) or print(text, end=""))
    args = ["prompt=What is 2 + 3?", "temperature=1", "max_new_tokens=16", f"engine={engine}"]
    assert main(["chat", "tiny-random", *args]) == 0
    out = capsys.readouterr().out
    assert len(pieces) > 1  # printed as the tokens came, not at the end
    assert out == "".join(pieces) + "\n"
    options = Namespace(model="tiny-random", engine=engine)
    loaded, tokenizer = chat.load_engine(options)
    prompt = chat.encode_chat(tokenizer, [{"role": "user", "content": "What is 2 + 3?"}])
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=0)
    assert "".join(pieces) == loaded.generate([prompt], 1, params)[0][0].text.strip()  # the reply generate gives


def test_evaluating_during_training_changes_no_training_value(evaluated_run, tiny_run):
    """Greedy evaluation draws no training randomness: the same run without eval.every trains the same weights."""
    from safetensors.torch import load_file

    run_dir, _ = evaluated_run
    drop = ("step_seconds", "tokens_per_second", "eval/accuracy")
    comparable = lambda folder: [
        {k: v for k, v in r.items() if k not in drop and not k.startswith("time/")} for r in records(folder)
    ]
    assert comparable(run_dir) == comparable(tiny_run)
    with_eval, without = (load_file(str(folder / "final" / "model.safetensors")) for folder in (run_dir, tiny_run))
    assert with_eval.keys() == without.keys() and all((with_eval[k] == without[k]).all() for k in with_eval)
