"""The run folder and its lifecycle: config.yaml, metrics.jsonl, eval.json, final/; resuming; stop requests.

The run folder holds config.yaml, metrics.jsonl, eval.json, final/. Nothing in an existing run folder is
overwritten unless the user says `overwrite=true`; files that must never be half-written (eval.json,
final/) are written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from grpolab.checkpoint import latest_checkpoint, truncate_metrics
from grpolab.config import Config, to_yaml


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path:
    """Create `run_dir`, refusing a non-empty one unless `overwrite` (which then empties it)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"output_dir: {str(run_dir)!r} is a file, not a folder")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output_dir: {str(run_dir)!r} already holds a run; pass overwrite=true or choose another output_dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def save_model_atomic(model, tokenizer, target: Path) -> None:
    """Save a loadable Hugging Face folder at `target` via a temporary sibling and a rename."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a crash loses at most the line being written."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite updates); printed as one line."""


class StopRequest:
    """SIGINT / SIGTERM ask for a checkpoint at the next step boundary instead of dying mid-update."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def open_run_dir(config: Config) -> tuple[Path, Path | None]:
    """A fresh run folder, or (with `resume=true`) the existing one and its newest complete checkpoint."""
    run_dir = config.run_dir()
    if not config.resume:
        prepare_run_dir(run_dir, config.overwrite)
        write_text_atomic(run_dir / "config.yaml", to_yaml(config))
        return run_dir, None
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"resume: {str(run_dir)!r} holds no run (no config.yaml)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:  # crashed before its first checkpoint: start again in the same folder
        truncate_metrics(run_dir / "metrics.jsonl", 0)
    return run_dir, checkpoint


def check_finite(record: dict, state: dict, config: Config) -> None:
    if record["skipped_updates"] == 0:
        state["nonfinite_in_a_row"] = 0
        return
    state["nonfinite_in_a_row"] += 1
    if state["nonfinite_in_a_row"] >= config.train.max_nonfinite_steps:
        raise TrainingError(
            f"step {record['step']}: non-finite loss or gradients in {state['nonfinite_in_a_row']} steps in a row "
            f"(train.max_nonfinite_steps={config.train.max_nonfinite_steps}); "
            "lower train.learning_rate or check the data"
        )
