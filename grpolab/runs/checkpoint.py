"""Checkpoints that make a crash a non-event.

A checkpoint is `checkpoints/step-N/` holding the policy weights (safetensors), the optimizer and scheduler
state, every RNG state, the position in the training data stream, the step, and the trainer's extra state
(e.g. the before-training evaluation). It is written into a hidden temporary folder and renamed into place,
so a crash while saving leaves the previous checkpoint intact and a half-written one is never loaded
(folders whose names start with "." are ignored). Only the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from grpolab.errors import RunFolderError
from grpolab.runs.staging import give_plain_modes, staging_folder

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(model) -> dict[str, torch.Tensor]:
    """Trainable weights only, contiguous and de-duplicated (tied embeddings are saved once)."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().cpu().contiguous()
    return state


def save_checkpoint(
    run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, keep: int, extra_models=None
) -> Path:
    """`extra_models` maps a name to another module saved beside the policy (e.g. a reset reference)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(root, f".step-{step}.")
    save_file(model_state(model), str(staging / "model.safetensors"))
    for name, extra in (extra_models or {}).items():
        save_file(model_state(extra), str(staging / f"{name}.safetensors"))
    training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    return publish_checkpoint(staging, root, step, training_state, trainer_state, keep)


def publish_checkpoint(staging: Path, root: Path, step: int, training_state: dict, trainer_state: dict, keep: int):
    """Add the RNG and trainer state to a staged checkpoint, rename it into place and prune old ones."""
    torch.save({**training_state, "rng": rng_state()}, staging / "training_state.pt")
    (staging / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    give_plain_modes(staging)
    target = root / f"step-{step}"
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    prune_checkpoints(root, keep)
    return target


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "trainer_state.json").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    for path in root.iterdir():  # leftovers of a crash while saving
        if path.name.startswith(".step-"):
            shutil.rmtree(path, ignore_errors=True)
    checkpoints = list_checkpoints(root.parent)
    for _, path in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG states; returns the trainer state (with "step")."""
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    full = model.state_dict()
    loaded_storage = {full[name].data_ptr() for name in weights if name in full}
    untied_missing = [name for name in missing if full[name].data_ptr() not in loaded_storage]
    if untied_missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {untied_missing}, unexpected {unexpected}"
        )
    state = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines of a per-step JSONL file (metrics.jsonl, samples.jsonl) after `step`: steps lost in a crash
    are redone, never duplicated. A cut-off last line (the disk filled, the process died mid-write) is
    dropped too; a damaged line elsewhere stops the resume, naming the line, before anything is rewritten."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunFolderError(f"{path} line {number}: not valid JSON; the file is damaged") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise RunFolderError(f"{path} line {number}: no integer `step`; the file is damaged")
        if record["step"] <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.truncate")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
