"""The run folder and its lifecycle: config.yaml, metrics.jsonl, eval.json, final/; resuming; stop requests.

The run folder holds config.yaml, metrics.jsonl, eval.json, final/. Nothing in an existing run folder is
overwritten unless the user says `overwrite=true`; files that must never be half-written (eval.json,
final/) are written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from pathlib import Path

import torch

from grpolab.config import Config, to_dict, to_yaml
from grpolab.errors import ConfigError, RunFolderError, TrainingError
from grpolab.runs.checkpoint import latest_checkpoint, truncate_metrics
from grpolab.runs.staging import give_plain_modes, open_staging_file, staging_folder

RUN_MARKER = ".grpolab-run"  # written into every folder grpolab makes a run in: only such folders are ever emptied
LOCK_FILE = ".lock"
# What a run folder holds before its first step has finished: nothing of value is lost by starting it again.
NOT_STARTED = {RUN_MARKER, LOCK_FILE, "config.yaml"}


def holds_run(folder: Path) -> bool:
    """A folder grpolab made a run in: its marker, or (runs from before the marker) a config.yaml beside the
    files only a run writes."""
    if (folder / RUN_MARKER).is_file():
        return True
    written = ("metrics.jsonl", "eval.json", "final", "checkpoints", "summary.json")
    return (folder / "config.yaml").is_file() and any((folder / name).exists() for name in written)


def protected_reason(folder: Path) -> str | None:
    """Folders that are never emptied, run or not: the file system's root, the home folder, the working
    folder and any folder above it."""
    resolved, here = folder.resolve(), Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        return "the root folder"
    if resolved == Path.home().resolve():
        return "the home folder"
    if resolved == here or resolved in here.parents:
        return "the working folder or one above it"
    return None


def never_started(folder: Path) -> bool:
    """A run that failed or was stopped before its first step finished (bad data, bad model, Ctrl-C during
    the first evaluation): only its marker, config, lock, empty metrics and TensorBoard files."""
    if not (folder / RUN_MARKER).is_file():
        return False
    for entry in folder.iterdir():
        name = entry.name
        if name in NOT_STARTED or name.startswith("events.out.tfevents.") or is_staging(name):
            continue
        if name in ("metrics.jsonl", "samples.jsonl") and entry.is_file() and entry.stat().st_size == 0:
            continue
        return False
    return True


def is_staging(name: str) -> bool:
    """A temporary sibling of an atomic write (`.final.*`, `.eval.json.*`, ...), left by a crash."""
    return name.startswith(".") and name not in (RUN_MARKER, LOCK_FILE) and "." in name[1:]


def clean_staging(run_dir: Path) -> None:
    """Remove temporaries that a crash left mid-write; they are never part of a run."""
    for entry in run_dir.iterdir():
        if is_staging(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def empty_folder(folder: Path) -> None:
    """Remove everything inside `folder` but the lock (another process may be waiting on it)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path:
    """Create `run_dir` and mark it as a run. A non-empty folder is refused, except a run that never finished
    a step (started again) or, with `overwrite`, a run folder (emptied); a folder that holds no grpolab run
    is never emptied, nor the root, the home folder or the working folder and those above it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"output_dir: {str(run_dir)!r} is a file, not a folder")
    if run_dir.exists() and any(entry.name != LOCK_FILE for entry in run_dir.iterdir()):
        if not holds_run(run_dir):
            raise FileExistsError(
                f"output_dir: {str(run_dir)!r} is not empty and holds no grpolab run; choose another output_dir "
                "(overwrite=true only ever empties a run folder)"
            )
        if not never_started(run_dir):
            if not overwrite:
                raise FileExistsError(
                    f"output_dir: {str(run_dir)!r} already holds a run; pass overwrite=true or choose another "
                    "output_dir"
                )
            reason = protected_reason(run_dir)
            if reason:
                raise RunFolderError(f"output_dir: {str(run_dir)!r} is {reason}; overwrite=true never empties it")
        empty_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("grpolab run folder: `overwrite=true` may empty it\n")
    return run_dir


class RunLock:
    """An exclusive lock on a run folder for as long as a process trains in it (flock: the kernel releases
    it when the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self.handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise RunFolderError(f"output_dir: {str(run_dir)!r} is in use by {holder}; wait for it to end") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.close()


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = open_staging_file(path)
    with handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(staging, path)


def write_text_atomic(path: Path, text: str) -> None:
    handle, staging = open_staging_file(path)
    with handle:
        handle.write(text)
    os.replace(staging, path)


def save_model_atomic(model, tokenizer, target: Path) -> None:
    """Save a loadable Hugging Face folder at `target` via a temporary sibling and a rename; `tokenizer` None
    saves the model alone (a LoRA adapter)."""
    staging = staging_folder(target.parent, f".{target.name}.")
    model.save_pretrained(staging, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    give_plain_modes(staging)
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


# Keys a resumed run may change: they alter how the run is watched, saved, batched or bounded, not what it
# computes (rollout.generation_batch: sampling is seeded per prompt index, so the same samples come out).
RESUMABLE_KEYS = (
    "log.",
    "train.max_steps",
    "train.max_minutes",
    "train.save_every",
    "train.keep_checkpoints",
    "train.max_nonfinite_steps",
    "rollout.generation_batch",
    "rollout.workers",  # with rollout.max_staleness=0 workers sample exactly what the trainer would
    "rollout.worker_threads",
    "train.threads",
    "eval.every",
    "reward.num_workers",
    "reward.timeout_seconds",
    "eval.batch_size",
)
RUN_PLACE_KEYS = ("output_dir", "name", "resume", "overwrite")  # where the run is, not what it is


def flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and key != "weights":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resumed_config(run_dir: Path, config: Config) -> Config:
    """The config a resumed run continues with: the saved one, with only `RESUMABLE_KEYS` changed (and
    config.yaml rewritten to say so); any other change is refused in one line naming the keys."""
    from grpolab.config import load_config

    saved = load_config(str(run_dir / "config.yaml"))
    before, after = flat(to_dict(saved)), flat(to_dict(config))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    changed = [k for k in changed if k not in RUN_PLACE_KEYS]
    refused = [k for k in changed if not k.startswith(RESUMABLE_KEYS)]
    if refused:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in refused[:3])
        raise ConfigError(
            f"resume: {shown} would change what the run in {str(run_dir)!r} computes; "
            "a resumed run keeps its settings (start a new run with another output_dir to change them)"
        )
    if changed:
        for key in RUN_PLACE_KEYS:
            setattr(config, key, getattr(saved, key))
        write_text_atomic(run_dir / "config.yaml", to_yaml(config))
        config.resume, config.output_dir = True, str(run_dir)
    return config


def open_run_dir(config: Config) -> tuple[Path, Path | None, RunLock]:
    """A fresh run folder, or (with `resume=true`) the existing one and its newest complete checkpoint;
    locked for this process either way (`RunLock`)."""
    run_dir = config.run_dir()
    if not config.resume:
        # never empty a folder another process is training in: lock a run folder before preparing it
        lock = RunLock(run_dir) if run_dir.is_dir() and holds_run(run_dir) else None
        try:
            prepare_run_dir(run_dir, config.overwrite)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        lock = lock or RunLock(run_dir)
        write_text_atomic(run_dir / "config.yaml", to_yaml(config))
        return run_dir, None, lock
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"resume: {str(run_dir)!r} holds no run (no config.yaml)")
    lock = RunLock(run_dir)
    try:
        resumed_config(run_dir, config)
        clean_staging(run_dir)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:  # crashed before its first checkpoint: start again in the same folder
            truncate_metrics(run_dir / "metrics.jsonl", 0)
            truncate_metrics(run_dir / "samples.jsonl", 0)
    except BaseException:
        lock.release()
        raise
    return run_dir, checkpoint, lock


def check_finite_weights(model) -> None:
    """final/ is never written with a weight that is not finite (e.g. a learning rate so large that every
    update overflowed while the gradients stayed finite)."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingError(
                f"the trained weights are not finite ({name}); final/ is not written: lower train.learning_rate"
            )


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
