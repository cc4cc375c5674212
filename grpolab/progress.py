"""Live progress on the terminal: a rich status line when stdout is a terminal, plain lines otherwise
(and nothing but the final summary with `log.quiet=true`)."""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


class Progress:
    def __init__(self, total_steps: int, quiet: bool = False, every: int = 1):
        self.total = total_steps
        self.quiet = quiet
        self.every = every
        self.start = time.perf_counter()
        self.live = None
        if not quiet and sys.stdout.isatty():
            from rich.live import Live

            self.live = Live("", refresh_per_second=4, transient=False)
            self.live.start()

    def message(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text)
        elif not self.quiet:
            print(text, flush=True)

    def line(self, metrics: dict) -> str:
        step = metrics["step"]
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step) if step else 0.0
        parts = [
            f"step {step}/{self.total}",
            f"reward {metrics['reward_mean']:.3f}",
            f"acc {metrics.get('accuracy', 0.0):.2f}",
            f"kl {metrics.get('kl', 0.0):.4f}",
            f"len {metrics['completion_len_mean']:.1f}",
            f"{metrics['tokens_per_second']:.0f} tok/s",
            f"{metrics['step_seconds']:.1f} s/step",
            f"ETA {format_seconds(eta)}",
        ]
        return " | ".join(parts)

    def update(self, metrics: dict) -> None:
        if self.quiet:
            return
        text = self.line(metrics)
        if self.live is not None:
            self.live.update(f"[bold]{text}[/bold]")
            if metrics["step"] % max(self.every, 10) == 0:
                self.live.console.print(text)
        elif metrics["step"] % self.every == 0 or metrics["step"] == self.total:
            print(text, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
