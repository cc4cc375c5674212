"""Live progress on the terminal. Three modes, chosen once at the start:

- a terminal: a rich live panel (step, progress bar, ETA, and a grid of the step's metrics) redrawn each step,
  with one plain line printed into the scrollback every `max(log.every, 10)` steps so the history survives;
- not a terminal (a log file, a pipe, a batch job): one plain line every `log.every` steps;
- quiet (`--quiet` / `log.quiet=true`): nothing here; the trainer still prints its final summary.

The metric names are those of `grpolab.training.metrics.step_metrics` (metrics.jsonl): `reward_mean`, `rewards/<name>`,
`accuracy`, `kl`, `entropy`, `completion_len_mean`, `clip_low_frac`, `clip_high_frac`, `tokens_per_second`,
`step_seconds`, `time/<phase>`, and on the steps that `eval.every` evaluates `eval/accuracy` (held-out, greedy). A
missing key is shown as "-" rather than failing, so that the display never stops a run.

The live panel fits the terminal's width (80 columns included): the metric grid takes as many columns as fit and
the long lines break between their parts, never inside one. With a time budget (`train.max_minutes`) that will
end the run before `train.max_steps`, the bar and the ETA follow the budget and say so. While the panel is drawn,
libraries' deprecation notices (Python's FutureWarning and DeprecationWarning from any module, and what the
`transformers` logger says, which is where most of its deprecations go) are written to `warnings.log` in the run
folder instead of tearing the panel (`DivertedWarnings`); other warnings print above the panel as usual.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

RECENT_STEPS = 10  # the ETA uses the mean time of this many recent steps


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def eta_seconds(step_seconds: list[float], remaining: int) -> float:
    """Remaining steps times the mean of the recent steps. The first step (model warm-up, allocator growth)
    is left out once later steps exist, since it is often several times slower."""
    if not step_seconds or remaining <= 0:
        return 0.0
    recent = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    return statistics.fmean(recent[-RECENT_STEPS:]) * remaining


def budget_eta(steps_eta: float, time_left: float) -> tuple[float, bool]:
    """(seconds to the end, whether the time budget ends the run first): the budget when it is shorter than the
    steps left. The loop checks the budget after each step, so the last step may run up to one step past it."""
    if time_left < steps_eta:
        return max(0.0, time_left), True
    return steps_eta, False


def eta_text(eta: float, by_budget: bool) -> str:
    return f"ETA {format_seconds(eta)}" + (" (time budget)" if by_budget else "")


def fold(pieces: list[str], width: int, separator: str) -> list[str]:
    """The pieces joined by `separator` into lines of at most `width` characters, broken only between pieces
    (continuation lines indented by two spaces); a piece longer than a line gets a line of its own."""
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if len(lines[-1]) + len(separator) + len(piece) <= width:
            lines[-1] += separator + piece
        else:
            lines.append("  " + piece)
    return lines


def _number(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else format(value, fmt)


def metric_cells(
    metrics: dict, with_times: bool = True, held_out: tuple[int, float] | None = None
) -> list[tuple[str, str]]:
    """(label, value) pairs for one step, in display order; shared by the live panel and the plain line.
    The held-out accuracy is the step's `eval/accuracy`, else `held_out` = (step, accuracy) of an earlier one."""
    reward = _number(metrics, "reward_mean", ".3f")
    if metrics.get("reward_std") is not None:
        reward += f" ± {metrics['reward_std']:.3f}"
    cells = [("reward", reward)]
    cells += [(key, _number(metrics, key, ".3f")) for key in sorted(metrics) if key.startswith("rewards/")]
    cells += [("accuracy", _number(metrics, "accuracy", ".3f"))]
    if metrics.get("eval/accuracy") is not None:
        cells += [("held-out", f"{metrics['eval/accuracy']:.3f}")]
    elif held_out is not None:
        cells += [("held-out", f"{held_out[1]:.3f} (step {held_out[0]})")]
    cells += [
        ("kl", _number(metrics, "kl", ".4f")),
        ("entropy", _number(metrics, "entropy", ".3f")),
        ("length", _number(metrics, "completion_len_mean", ".1f")),
        ("clip low/high", f"{_number(metrics, 'clip_low_frac', '.1%')}/{_number(metrics, 'clip_high_frac', '.1%')}"),
        ("tok/s", _number(metrics, "tokens_per_second", ".0f")),
    ]
    if with_times:  # the live panel shows these on a line of their own (`phase_text`)
        cells += [("step s", _number(metrics, "step_seconds", ".2f"))]
        cells += [(key, _number(metrics, key, ".2f")) for key in metrics if key.startswith("time/")]
    return cells


def phase_pieces(metrics: dict) -> list[str]:
    """`seconds: step 3.11`, `= generate 1.95`, `+ policy 0.95`, ...: the live panel's line of phases."""
    parts = [f"{key.removeprefix('time/')} {metrics[key]:.2f}" for key in metrics if key.startswith("time/")]
    signs = ["="] + ["+"] * (len(parts) - 1)
    return [f"seconds: step {_number(metrics, 'step_seconds', '.2f')}"] + [f"{s} {p}" for s, p in zip(signs, parts)]


def phase_text(metrics: dict) -> str:
    """`seconds: step 3.11 = generate 1.95 + policy 0.95 + ...` on one line."""
    return " ".join(phase_pieces(metrics))


def plain_pieces(metrics: dict, total: int, eta: float, by_budget: bool = False) -> list[str]:
    head = f"step {metrics['step']}/{total}"
    return [head, *(f"{label} {value}" for label, value in metric_cells(metrics)), eta_text(eta, by_budget)]


def plain_line(metrics: dict, total: int, eta: float, by_budget: bool = False) -> str:
    """One step on one line (a log file, a pipe): `step 4/10 | reward ... | ETA 1:15`."""
    return " | ".join(plain_pieces(metrics, total, eta, by_budget))


def panel(
    metrics: dict,
    total: int,
    elapsed: float,
    eta: float,
    width: int = 120,
    budget_used: float | None = None,
    held_out: tuple[int, float] | None = None,
) -> Group:
    """The live view within `width` columns: a header with the progress bar and times, the metrics in a grid,
    the phases. `budget_used`: the fraction of the time budget spent, when the budget ends the run first (the
    bar then shows it)."""
    step = metrics["step"]
    fraction = step / max(1, total) if budget_used is None else min(1.0, budget_used)
    head, percent = f"step {step}/{total}", f"{fraction:.0%}"
    times = f"elapsed {format_seconds(elapsed)}  {eta_text(eta, budget_used is not None)}"
    bar_width = min(30, width - len(head) - len(percent) - len(times) - 3)
    times_apart = bar_width < 10  # too narrow for one line: the times get a line of their own
    if times_apart:
        bar_width = max(1, min(30, width - len(head) - len(percent) - 2))
    header = Table.grid(padding=(0, 1))
    cells = [Text(head, style="bold"), ProgressBar(total=1.0, completed=fraction, width=bar_width), Text(percent)]
    header.add_row(*cells, *([] if times_apart else [Text(times, style="dim")]))
    lines = [header, Text(times, style="dim")] if times_apart else [header]
    lines.append(metric_grid(metric_cells(metrics, with_times=False, held_out=held_out), width))
    lines += [Text(line, style="dim", no_wrap=True) for line in fold(phase_pieces(metrics), width, " ")]
    return Group(*lines)


def metric_grid(cells: list[tuple[str, str]], width: int, most_columns: int = 4) -> Table:
    """(label, value) pairs in as many column pairs as fit in `width` (at least one, at most `most_columns`)."""

    def grid_width(columns: int) -> int:  # padding (0, 2): 2 spaces between cells, columns * 2 - 1 gaps
        pairs = [cells[start::columns] for start in range(columns)]
        cells_width = sum(max(len(c[0]) for c in pair) + max(len(c[1]) for c in pair) for pair in pairs)
        return cells_width + (columns * 2 - 1) * 2

    columns = next((c for c in range(most_columns, 1, -1) if len(cells) >= c and grid_width(c) <= width), 1)
    grid = Table.grid(padding=(0, 2))
    for _ in range(columns):
        grid.add_column(style="cyan", justify="right", no_wrap=True)
        grid.add_column(justify="left", no_wrap=True)
    for start in range(0, len(cells), columns):
        row = cells[start : start + columns]
        row += [("", "")] * (columns - len(row))
        grid.add_row(*(text for cell in row for text in cell))
    return grid


class DivertedWarnings:
    """While entered: FutureWarning / DeprecationWarning (from any module: transformers' own often name their
    caller, through `stacklevel`) and the `transformers` logger's records go to `path` (None: dropped), counted in
    `count`. Everything else is shown as before. Leaving restores the warning filters and the logger."""

    CATEGORIES = (FutureWarning, DeprecationWarning)

    def __init__(self, path: Path | None):
        self.path = path
        self.count = 0

    def write(self, text: str) -> None:
        self.count += 1
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(text if text.endswith("\n") else text + "\n")

    def __enter__(self):
        self.catcher = warnings.catch_warnings()  # saves and restores the filters and `showwarning`
        self.catcher.__enter__()
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, self.CATEGORIES):
                self.write(warnings.formatwarning(message, category, filename, lineno, line))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        self.logger = logging.getLogger("transformers")
        self.handlers, self.propagate = self.logger.handlers[:], self.logger.propagate
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: self.write(f"{record.levelname} {record.name}: {record.getMessage()}")
        self.logger.handlers, self.logger.propagate = [handler], False
        return self

    def __exit__(self, *exc) -> None:
        self.logger.handlers, self.logger.propagate = self.handlers, self.propagate
        self.catcher.__exit__(*exc)


class Progress:
    """What the trainer talks to: `message(text)`, `update(metrics)` once per step, `close()` at the end;
    `set_deadline(when)` once training starts under a time budget (a `time.monotonic()` value)."""

    def __init__(
        self,
        total_steps: int,
        quiet: bool = False,
        every: int = 1,
        console: Console | None = None,
        warnings_log: Path | None = None,
    ):
        self.total = total_steps
        self.quiet = quiet
        self.every = every
        self.start = time.monotonic()
        self.deadline, self.budget_start = math.inf, self.start
        self.step_seconds: list[float] = []
        self.latest: dict | None = None
        self.latest_at = self.start
        self.held_out: tuple[int, float] | None = None  # (step, accuracy) of the latest eval/accuracy
        self.console = console or Console()
        self.live = None
        self.diverted = None
        if not quiet and self.console.is_terminal:
            self.diverted = DivertedWarnings(warnings_log).__enter__()
            # Live re-renders `self` 4 times a second, so the elapsed time and ETA tick between steps.
            self.live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def set_deadline(self, deadline: float) -> None:
        self.deadline, self.budget_start = deadline, time.monotonic()

    def remaining(self, now: float) -> tuple[float, float | None]:
        """(seconds to the end, the fraction of the time budget spent or None when max_steps ends the run first)."""
        step = self.latest["step"] if self.latest is not None else 0
        steps_eta = max(0.0, eta_seconds(self.step_seconds, self.total - step) - (now - self.latest_at))
        eta, by_budget = budget_eta(steps_eta, self.deadline - now)
        if not by_budget:
            return eta, None
        spent = now - self.budget_start
        return eta, spent / max(spent + eta, 1e-9)

    def __rich_console__(self, console, options):
        now = time.monotonic()
        if self.latest is None:
            yield Text(f"preparing the first step ... elapsed {format_seconds(now - self.start)}", style="dim")
            return
        eta, budget_used = self.remaining(now)
        yield panel(self.latest, self.total, now - self.start, eta, options.max_width, budget_used, self.held_out)

    def message(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text)
        elif not self.quiet:
            print(text, flush=True)

    def warning(self, text: str) -> None:
        """Something the user must see even with --quiet (on stderr)."""
        if self.live is not None:
            self.live.console.print(text)
        else:
            print(f"grpolab: warning: {text}", file=sys.stderr, flush=True)

    def update(self, metrics: dict) -> None:
        if metrics.get("step_seconds") is not None:
            self.step_seconds.append(metrics["step_seconds"])
        step = metrics["step"]
        if metrics.get("eval/accuracy") is not None:
            self.held_out = (step, metrics["eval/accuracy"])
        if self.quiet:
            return
        now = time.monotonic()
        self.latest, self.latest_at = metrics, now
        eta, budget_used = self.remaining(now)
        by_budget = budget_used is not None
        if self.live is not None:
            self.live.refresh()
            if step % max(self.every, 10) == 0 or step == self.total:
                lines = fold(plain_pieces(metrics, self.total, eta, by_budget), self.console.width, " | ")
                self.live.console.print("\n".join(lines), highlight=False, soft_wrap=True)
            elif metrics.get("eval/accuracy") is not None:  # an evaluation stays in the scrollback
                self.live.console.print(f"step {step}: held-out accuracy {metrics['eval/accuracy']:.3f}")
        elif step % self.every == 0 or step == self.total:
            print(plain_line(metrics, self.total, eta, by_budget), flush=True)
        elif metrics.get("eval/accuracy") is not None:
            print(f"step {step}/{self.total} | held-out {metrics['eval/accuracy']:.3f}", flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.diverted is not None:
            self.diverted.__exit__(None, None, None)
            if self.diverted.count:
                where = self.diverted.path or "nowhere (no run folder)"
                text = f"{self.diverted.count} library warning(s) while training went to {where}"
                self.console.print(text, soft_wrap=True, highlight=False)  # a path unbroken, to copy
            self.diverted = None
