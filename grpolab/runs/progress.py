"""Live progress on the terminal. Three modes, chosen once at the start:

- a terminal: a rich live panel (step, progress bar, ETA, and a grid of the step's metrics) redrawn each step,
  with one plain line printed into the scrollback every `max(log.every, 10)` steps so the history survives;
- not a terminal (a log file, a pipe, a batch job): one plain line every `log.every` steps;
- quiet (`--quiet` / `log.quiet=true`): nothing here; the trainer still prints its final summary.

The metric names are those of `grpolab.training.metrics.step_metrics` (metrics.jsonl): `reward_mean`, `rewards/<name>`,
`accuracy`, `kl`, `entropy`, `completion_len_mean`, `clip_low_frac`, `clip_high_frac`, `tokens_per_second`,
`step_seconds`, `time/<phase>`. A missing key is shown as "-" rather than failing, so that the display never
stops a run.
"""

from __future__ import annotations

import statistics
import sys
import time

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


def _number(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else format(value, fmt)


def metric_cells(metrics: dict, with_times: bool = True) -> list[tuple[str, str]]:
    """(label, value) pairs for one step, in display order; shared by the live panel and the plain line."""
    reward = _number(metrics, "reward_mean", ".3f")
    if metrics.get("reward_std") is not None:
        reward += f" ± {metrics['reward_std']:.3f}"
    cells = [("reward", reward)]
    cells += [(key, _number(metrics, key, ".3f")) for key in sorted(metrics) if key.startswith("rewards/")]
    cells += [
        ("accuracy", _number(metrics, "accuracy", ".3f")),
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


def phase_text(metrics: dict) -> str:
    """`seconds: step 3.11 = generate 1.95 + policy 0.95 + ...`, one line for the live panel."""
    parts = [f"{key.removeprefix('time/')} {metrics[key]:.2f}" for key in metrics if key.startswith("time/")]
    return f"seconds: step {_number(metrics, 'step_seconds', '.2f')}" + (" = " + " + ".join(parts) if parts else "")


def plain_line(metrics: dict, total: int, eta: float) -> str:
    head = f"step {metrics['step']}/{total}"
    return " | ".join(
        [head, *(f"{label} {value}" for label, value in metric_cells(metrics)), f"ETA {format_seconds(eta)}"]
    )


def panel(metrics: dict, total: int, elapsed: float, eta: float, columns: int = 4) -> Group:
    """The live view: a header with the progress bar and times, then the metrics in a grid."""
    step = metrics["step"]
    header = Table.grid(padding=(0, 1))
    header.add_row(
        Text(f"step {step}/{total}", style="bold"),
        ProgressBar(total=max(1, total), completed=step, width=30),
        Text(f"{step / max(1, total):.0%}"),
        Text(f"elapsed {format_seconds(elapsed)}  ETA {format_seconds(eta)}", style="dim"),
    )
    grid = Table.grid(padding=(0, 2))
    for _ in range(columns):
        grid.add_column(style="cyan", justify="right")
        grid.add_column(justify="left")
    cells = metric_cells(metrics, with_times=False)
    for start in range(0, len(cells), columns):
        row = cells[start : start + columns]
        row += [("", "")] * (columns - len(row))
        grid.add_row(*(text for cell in row for text in cell))
    return Group(header, grid, Text(phase_text(metrics), style="dim"))


class Progress:
    """What the trainer talks to: `message(text)`, `update(metrics)` once per step, `close()` at the end."""

    def __init__(self, total_steps: int, quiet: bool = False, every: int = 1, console: Console | None = None):
        self.total = total_steps
        self.quiet = quiet
        self.every = every
        self.start = time.perf_counter()
        self.step_seconds: list[float] = []
        self.latest: dict | None = None
        self.latest_at = self.start
        self.console = console or Console()
        self.live = None
        if not quiet and self.console.is_terminal:
            # Live re-renders `self` 4 times a second, so the elapsed time and ETA tick between steps.
            self.live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def __rich__(self):
        now = time.perf_counter()
        if self.latest is None:
            return Text(f"preparing the first step ... elapsed {format_seconds(now - self.start)}", style="dim")
        eta = max(0.0, eta_seconds(self.step_seconds, self.total - self.latest["step"]) - (now - self.latest_at))
        return panel(self.latest, self.total, now - self.start, eta)

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
        if self.quiet:
            return
        step = metrics["step"]
        eta = eta_seconds(self.step_seconds, self.total - step)
        if self.live is not None:
            self.latest, self.latest_at = metrics, time.perf_counter()
            self.live.refresh()
            if step % max(self.every, 10) == 0 or step == self.total:
                self.live.console.print(plain_line(metrics, self.total, eta), highlight=False)
        elif step % self.every == 0 or step == self.total:
            print(plain_line(metrics, self.total, eta), flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
