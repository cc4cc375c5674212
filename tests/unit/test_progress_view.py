"""What the live display shows: every line within 80 columns, the ETA under a time budget, the held-out accuracy
of `eval.every`, and library deprecation warnings kept out of the panel (grpolab/runs/progress.py)."""

from __future__ import annotations

import io
import logging
import re
import time
import warnings

import pytest
from rich.console import Console

from grpolab.runs.progress import Progress, budget_eta, fold, metric_cells, panel, plain_line

RECORD = {
    "step": 10,
    "reward_mean": 0.625,
    "reward_std": 0.5,
    "rewards/correctness": 0.5,
    "rewards/format": 0.25,
    "rewards/overlong_punishment": -0.125,
    "accuracy": 0.5,
    "eval/accuracy": 0.375,
    "kl": 0.00123,
    "entropy": 1.25,
    "clip_low_frac": 0.01,
    "clip_high_frac": 0.0,
    "completion_len_mean": 12.5,
    "tokens_per_second": 800.0,
    "step_seconds": 100.0,
    "time/rewards": 0.05,
    "time/generate": 60.0,
    "time/old_logprobs": 10.0,
    "time/reference": 10.0,
    "time/policy": 15.0,
    "time/optimizer": 4.95,
}
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # cursor movement and erasing of rich's Live


def screen_lines(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", CONTROL.sub("", text)) if line.strip()]


def rendered(progress: Progress, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(progress)
    return screen_lines(out.getvalue())


def plain_progress(total: int = 1000) -> Progress:
    return Progress(total, console=Console(file=io.StringIO()))  # not a terminal: plain lines on stdout


@pytest.mark.parametrize("width", [80, 60, 40])
def test_every_line_of_the_panel_fits_the_terminal(width, capsys):
    progress = plain_progress()
    progress.update(RECORD)
    lines = rendered(progress, width)
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    if width < 60:  # narrower than a label and its value: cells are cut with "…", lines still fit
        return
    text = "\n".join(lines)
    for label in ["step 10/1000", "ETA", "rewards/overlong_punishment", "clip low/high", "held-out", "tok/s"]:
        assert label in text  # shown whole, never cut
    assert "optimizer 4.95" in text  # the phases break between parts, not inside one


def test_the_scrollback_lines_of_the_live_panel_fit_80_columns():
    out = io.StringIO()
    progress = Progress(10, console=Console(file=out, force_terminal=True, width=80, color_system=None))
    progress.update(RECORD)  # step 10 of 10: a plain line goes into the scrollback
    progress.close()
    lines = screen_lines(out.getvalue())
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    history = [line for line in lines if " | " in line]
    assert history[0].startswith("step 10/10 | reward 0.625 ± 0.500 | ")
    assert history[-1].endswith(" | ETA 0:00")


@pytest.mark.parametrize(
    "pieces, width, expected",
    [
        (["a", "b", "c"], 80, ["a | b | c"]),
        (["aaaa", "bbbb", "cccc"], 11, ["aaaa | bbbb", "  cccc"]),
        (["a", "longer than the line", "b"], 5, ["a", "  longer than the line", "  b"]),
    ],
)
def test_fold_breaks_between_pieces(pieces, width, expected):
    assert fold(pieces, width, " | ") == expected


@pytest.mark.parametrize(
    "steps_eta, time_left, expected",
    [
        (900.0, float("inf"), (900.0, False)),  # no time budget
        (900.0, 190.0, (190.0, True)),  # the budget ends the run first
        (100.0, 190.0, (100.0, False)),  # max_steps ends it first
        (900.0, -5.0, (0.0, True)),  # past the budget: the step that runs is the last
    ],
)
def test_budget_eta(steps_eta, time_left, expected):
    assert budget_eta(steps_eta, time_left) == expected


def test_eta_and_bar_follow_the_time_budget(capsys):
    progress = plain_progress(total=10)
    progress.set_deadline(time.monotonic() + 190)  # 3:10 left; 9 steps of 100 s would take 15:00
    progress.update({**RECORD, "step": 1})
    line = capsys.readouterr().out.strip()
    assert re.search(r" \| ETA 3:(09|10) \(time budget\)$", line), line
    view = "\n".join(rendered(progress, 80))
    assert re.search(r"ETA 3:(09|10) \(time budget\)", view)
    assert "0%" in view and "10%" not in view  # the bar counts the budget (just begun), not the steps (1 of 10)


def test_without_a_budget_the_eta_counts_steps(capsys):
    progress = plain_progress(total=10)
    progress.set_deadline(time.monotonic() + 3600)  # a budget longer than the steps left
    progress.update({**RECORD, "step": 1})
    assert capsys.readouterr().out.strip().endswith(" | ETA 15:00")
    assert "10%" in "\n".join(rendered(progress, 80))


def test_held_out_accuracy_is_shown_and_kept_between_evaluations(capsys):
    assert dict(metric_cells(RECORD))["held-out"] == "0.375"
    assert "held-out" not in dict(metric_cells({"step": 3}))
    assert dict(metric_cells({"step": 3}, held_out=(2, 0.5)))["held-out"] == "0.500 (step 2)"
    assert "| held-out 0.375 |" in plain_line(RECORD, 10, 0)
    progress = plain_progress()
    progress.update(RECORD)
    progress.update({key: value for key, value in RECORD.items() if key != "eval/accuracy"} | {"step": 11})
    assert "0.375 (step 10)" in "\n".join(rendered(progress, 80))
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(panel({"step": 11, "reward_mean": 0.5}, 20, 5.0, 5.0, width=80, held_out=(10, 0.375)))
    assert "0.375 (step 10)" in console.file.getvalue()


def test_deprecation_warnings_go_to_the_log_file_while_the_panel_is_live(tmp_path):
    log_path = tmp_path / "warnings.log"
    out = io.StringIO()
    original_handlers = logging.getLogger("transformers").handlers[:]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        original_show = warnings.showwarning
        progress = Progress(10, console=Console(file=out, force_terminal=True, width=80), warnings_log=log_path)
        warnings.warn("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        logging.getLogger("transformers.generation").warning("`generation_config` default values have been modified")
        warnings.warn("a user warning", UserWarning, stacklevel=1)
        progress.update(RECORD)
        progress.close()
        assert warnings.showwarning is original_show  # the filters and the hook are restored
    assert logging.getLogger("transformers").handlers == original_handlers
    written = log_path.read_text()
    assert "FutureWarning: `torch_dtype` is deprecated" in written and "DeprecationWarning: old API" in written
    assert "transformers.generation: `generation_config`" in written and "a user warning" not in written
    assert [str(w.message) for w in shown] == ["a user warning"]  # shown as usual
    screen = CONTROL.sub("", out.getvalue())
    assert "deprecated" not in screen and "generation_config" not in screen
    assert f"3 library warning(s) while training went to {log_path}" in screen


def test_warnings_are_left_alone_without_a_live_panel():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        progress = plain_progress()
        warnings.warn("deprecated", FutureWarning, stacklevel=1)
        progress.close()
    assert [w.category for w in shown] == [FutureWarning]
