"""The run folder: config.yaml, metrics.jsonl, eval.json, final/. Nothing in an existing run folder is
overwritten unless the user says `overwrite=true`; files that must never be half-written (eval.json,
final/) are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


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
