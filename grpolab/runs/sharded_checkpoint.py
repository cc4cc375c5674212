"""Checkpoints of an FSDP run, in torch's distributed checkpoint format (`torch.distributed.checkpoint`).

Each rank writes its own shards of the weights and optimizer state into `checkpoints/step-N/sharded/`; rank 0
adds the scheduler, RNG and trainer state as in the one-process format (grpolab/runs/checkpoint.py), and renames
the staged folder into place only after every rank has written, so a crash mid-save leaves the previous
checkpoint. The format does not depend on the number of ranks: DCP reshards on load, so a run can resume
on a different number of processes. Every rank must see the run folder (one machine, or a shared filesystem).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from grpolab.runs.checkpoint import publish_checkpoint, set_rng_state
from grpolab.runs.staging import staging_folder

SHARDED_DIR = "sharded"


def is_sharded(checkpoint: Path) -> bool:
    return (checkpoint / SHARDED_DIR).is_dir()


def _state(scorer, optimizer, reference) -> dict:
    model_state, optimizer_state = get_state_dict(scorer, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if reference is not None:
        state["reference"] = get_model_state_dict(reference)
    return state


def save_sharded_checkpoint(run_dir: Path, step: int, run, trainer_state: dict, keep: int, reference=None) -> None:
    """Collective: every rank calls it. `reference` is the (sharded) reference model to save, or None."""
    parallel = run.parallel
    root = run_dir / "checkpoints"

    def stage() -> Path:
        root.mkdir(parents=True, exist_ok=True)
        return staging_folder(root, f".step-{step}.")

    staging = parallel.on_main(stage)
    dcp.save(_state(run.scorer, run.optimizer, reference), checkpoint_id=str(staging / SHARDED_DIR))
    parallel.barrier()
    if parallel.is_main:
        publish_checkpoint(staging, root, step, {"scheduler": run.scheduler.state_dict()}, trainer_state, keep)
    parallel.barrier()


def load_sharded_checkpoint(path: Path, run, reference=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG states in place; returns the trainer state (with "step")."""
    state = _state(run.scorer, run.optimizer, reference)
    dcp.load(state, checkpoint_id=str(path / SHARDED_DIR))
    set_state_dict(run.scorer, run.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if reference is not None:
        set_model_state_dict(reference, state["reference"])
    training = torch.load(path / "training_state.pt", weights_only=False)
    run.scheduler.load_state_dict(training["scheduler"])
    set_rng_state(training["rng"])
    return json.loads((path / "trainer_state.json").read_text())
