"""The terminal display, the tracking backends and the plot helpers, without training anything."""

from __future__ import annotations

import io
import math
import sys
import types

import pytest
from rich.console import Console

from grpolab.config import load_config
from grpolab.errors import ConfigError
from grpolab.report.plots import moving_average, smoothing_window
from grpolab.runs.progress import Progress, eta_seconds, format_seconds, metric_cells, plain_line
from grpolab.runs.tracking import Tracker, check_backends, sample_due, samples_markdown, scalars

RECORD = {
    "step": 4,
    "reward_mean": 0.625,
    "reward_std": 0.5,
    "accuracy": 0.5,
    "kl": 0.00123,
    "entropy": 1.25,
    "clip_low_frac": 0.01,
    "clip_high_frac": 0.0,
    "completion_len_mean": 12.5,
    "tokens_per_second": 800.0,
    "step_seconds": 2.0,
    "rewards/correctness": 0.5,
    "rewards/format": None,
    "time/generate": 1.5,
    "time/policy": 0.5,
}


def test_metric_cells_cover_the_issue_list():
    cells = dict(metric_cells(RECORD))
    assert cells["reward"] == "0.625 ± 0.500"
    assert cells["rewards/correctness"] == "0.500" and cells["rewards/format"] == "-"
    assert cells["kl"] == "0.0012" and cells["entropy"] == "1.250" and cells["length"] == "12.5"
    assert cells["clip low/high"] == "1.0%/0.0%"
    assert cells["tok/s"] == "800" and cells["time/generate"] == "1.50"


def test_missing_metrics_show_a_dash():
    assert dict(metric_cells({"step": 1}))["kl"] == "-"


def test_plain_line():
    line = plain_line(RECORD, 10, 75)
    assert line.startswith("step 4/10 | reward 0.625 ± 0.500 | ")
    assert line.endswith(" | ETA 1:15")


@pytest.mark.parametrize(
    "history, remaining, expected",
    [
        ([], 5, 0.0),
        ([10.0], 3, 30.0),  # only the first step: use it
        ([10.0, 2.0, 4.0], 2, 6.0),  # the slow first step is left out
        ([10.0, 2.0], 0, 0.0),
    ],
)
def test_eta_seconds(history, remaining, expected):
    assert eta_seconds(history, remaining) == expected


def test_format_seconds():
    assert format_seconds(75) == "1:15"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(-3) == "0:00"


def test_quiet_prints_nothing(capsys):
    progress = Progress(10, quiet=True)
    progress.message("hello")
    progress.update(RECORD)
    progress.close()
    assert capsys.readouterr().out == ""


def test_plain_mode_prints_every_n_steps_and_the_last(capsys):
    progress = Progress(5, every=2, console=Console(file=io.StringIO()))  # not a terminal
    for step in range(1, 6):
        progress.update({**RECORD, "step": step})
    printed = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["step 2/5", "step 4/5", "step 5/5"]


def test_live_panel_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    progress = Progress(10, console=console)
    assert progress.live is not None
    progress.update(RECORD)
    progress.live.refresh()
    rendered = out.getvalue()
    progress.close()
    for text in ["step 4/10", "ETA", "rewards/correctness", "clip low/high", "seconds: step 2.00 = generate 1.50"]:
        assert text in rendered


def test_scalars_drop_none_nan_and_bools():
    assert scalars({"a": 1, "b": None, "c": math.nan, "d": True, "e": "x", "f": 0.5}) == {"a": 1.0, "f": 0.5}


@pytest.mark.parametrize(
    "step, every, steps, due",
    [(1, 10, 60, True), (10, 10, 60, True), (11, 10, 60, False), (60, 10, 60, True), (1, 0, 60, False)],
)
def test_sample_due(step, every, steps, due):
    assert sample_due(step, every, steps) is due


def test_samples_markdown_escapes_table_characters():
    text = samples_markdown(
        [{"prompt_index": 0, "question": "a|b", "completion": "x\ny", "reward": 1, "correct": True}]
    )
    assert text.splitlines()[-1] == "| 0 | a\\|b | x<br>y | 1.000 | True |"


def test_missing_optional_backend_is_a_one_line_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    config = load_config(None, ["log.wandb=true"])
    with pytest.raises(ConfigError, match=r"log.wandb=true but wandb is not installed \(pip install wandb"):
        check_backends(config.log)


def test_train_refuses_a_missing_backend_before_writing_anything(tmp_path, monkeypatch, capsys):
    import importlib.util

    from grpolab.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "trackio" else real(name))
    run_dir = tmp_path / "run"
    assert main(["train", "model=tiny-random", "log.trackio=true", f"output_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "log.trackio=true but trackio is not installed" in err and len(err.splitlines()) == 1
    assert not run_dir.exists()


def test_tracker_sends_records_and_tables_to_wandb(tmp_path, monkeypatch):
    """A stand-in wandb module records what the tracker asks of it."""
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun()
    fake.Table = lambda columns, data: ("table", columns, data)
    fake.__spec__ = types.SimpleNamespace(name="wandb")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    config = load_config(None, ["log.wandb=true", "log.tensorboard=false", "name=demo"])
    tracker = Tracker(config, tmp_path)
    tracker.log({"step": 3, "reward_mean": 0.5, "rewards/format": None}, 3)
    row = {"prompt_index": 0, "question": "q", "completion": "c", "reward": 1.0, "correct": True}
    tracker.log_samples([row], 3)
    tracker.close()
    assert calls[0][0] == "init" and calls[0][1]["project"] == "grpolab" and calls[0][1]["name"] == "demo"
    assert calls[1] == ("log", {"reward_mean": 0.5}, 3)
    assert calls[2] == ("log", {"samples": ("table", list(row), [list(row.values())])}, 3)
    assert calls[3] == ("finish",)
    assert (tmp_path / "samples.jsonl").read_text().count("\n") == 1


def test_samples_config_is_validated():
    with pytest.raises(ConfigError, match="log.samples_every"):
        load_config(None, ["log.samples_every=-1"])
    with pytest.raises(ConfigError, match="log.samples_prompts"):
        load_config(None, ["log.samples_prompts=0"])


def test_moving_average_by_hand():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, math.nan, 5.0], 3) == [1.0, 1.0, 3.0]
    assert math.isnan(moving_average([math.nan], 2)[0])


def test_smoothing_window():
    run = lambda n: types.SimpleNamespace(metrics=[{}] * n)
    assert smoothing_window([run(3)]) == 1
    assert smoothing_window([run(19), run(10)]) == 1
    assert smoothing_window([run(20)]) == 2
    assert smoothing_window([run(10), run(200)]) == 10
