"""What `grpolab plan` measured, read (the measuring is `training/plan.py`, run in a child process by `run_plan`):
the levers that would save memory with their estimated savings, the settings to try under a limit, the printed
report, and `train.memory_limit_gb`'s check before a run (`check_memory`). Apart from the measuring side, so that
the training loop can call the check without importing the module that runs the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from grpolab.config import Config, to_yaml
from grpolab.errors import ConfigError

PLAN_STEPS = 2
SCAN_ROWS = 256
EIGHT_BIT_BYTES = 2.03  # bytes a parameter of 8-bit moments (codes + a scale per block), against fp32's 8


def levers(config: Config, plan: dict) -> list[tuple[str, float]]:
    """(settings, estimated GB saved) for each memory lever the config does not use yet."""
    train, state, found = config.train, plan["state_gb"], []
    if train.optimizer == "adamw" and state["optimizer"]:
        found.append(("train.optimizer=adamw_8bit", state["optimizer"] * (1 - EIGHT_BIT_BYTES / 8)))
    if config.algorithm != "ppo" and not (train.optimizer_in_backward and not train.share_prompts):
        completions = plan["completions_per_step"]
        # with shared prompts every weight serves the prompt pass and the completion pass, and its gradient is
        # complete only after the prompt pass's backward, the last: no gradient could be freed before the end
        settings = (f"train.optimizer_in_backward=true train.max_grad_norm=0 train.micro_batch_size={completions} "
                    "train.share_prompts=false")  # fmt: skip
        found.append((settings, state["gradients"] * 0.9))  # all but about the largest parameter's
    if os.environ.get("GRPOLAB_MALLOC", "heap") != "default" and plan["peak_gb"] > 4:
        # freed blocks stay with the process (grpolab/model/memory.py): with GB-sized temporaries they add up
        found.append(("GRPOLAB_MALLOC=default (environment)", 0.1 * plan["peak_gb"]))
    if not train.activation_checkpointing:
        found.append(("train.activation_checkpointing=true", plan["policy_rise_gb"] * 0.8))
    if state["engine_copy"] and not config.rollout.share_weights:
        found.append(("rollout.dtype=fp32 rollout.share_weights=true", state["engine_copy"]))
    return sorted(found, key=lambda lever: -lever[1])


def fitting(config: Config, plan: dict, limit: float) -> list[str]:
    """The levers to try, largest first, until their estimated savings bring the peak under `limit`."""
    chosen, peak = [], plan["peak_gb"]
    for settings, saved in levers(config, plan):
        if peak <= limit:
            break
        chosen.append(f"{settings} (~{saved:.2f} GB)")
        peak -= saved
    return chosen


def report(config: Config, plan: dict, limit: float) -> str:
    lines = [
        f"plan: {plan['model']}, {plan['completions_per_step']} completions a step, the longest prompt of "
        f"{SCAN_ROWS} rows ({plan['prompt_tokens']} tokens) + {plan['new_tokens']} new tokens (forced), "
        f"{PLAN_STEPS} steps ({' + '.join(f'{s:.1f}' for s in plan['step_seconds'])} s)",
        f"{'phase':<14}{'seconds':>9}{'peak GB':>10}",
    ]
    for name, phase in plan["phases"].items():
        lines.append(f"{name:<14}{phase['seconds']:>9.2f}{phase['peak_gb']:>10.3f}")
    lines.append("state GB: " + ", ".join(f"{part} {gb:.3f}" for part, gb in plan["state_gb"].items()))
    lines.append(f"peak: {plan['peak_gb']:.3f} GB (the process after set-up: {plan['after_setup_gb']:.3f} GB)")
    if limit:
        verdict = "fits" if plan["peak_gb"] <= limit else "does NOT fit"
        lines.append(f"limit {limit:.1f} GB: {verdict}")
        if plan["peak_gb"] > limit:
            tries = fitting(config, plan, limit)
            lines.append("to try (estimates; plan again to measure): " + ("; ".join(tries) or "no lever left"))
    return "\n".join(lines)


def run_plan(config: Config) -> dict:
    """The plan of `config`, measured in a child process; returns its JSON record."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(to_yaml(config))
        done = subprocess.run([sys.executable, "-m", "grpolab.training.plan", str(path)], capture_output=True,
                              text=True)  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"plan: the worst-case step failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_memory(config: Config, log, distributed: bool = False) -> None:
    """`train.memory_limit_gb`: refuse the run, in one line, when its worst-case step would not fit."""
    limit = config.train.memory_limit_gb
    if not limit:
        return
    if distributed:
        raise ConfigError("train.memory_limit_gb: the plan measures one process; it is not checked under torchrun")
    if config.resume:
        return  # the run was planned when it started
    log(f"train.memory_limit_gb={limit}: measuring the worst-case step first (grpolab plan)")
    plan = run_plan(config)
    if plan["peak_gb"] > limit:
        tries = "; ".join(fitting(config, plan, limit)) or "lower rollout.max_new_tokens or the batch"
        raise ConfigError(f"train.memory_limit_gb: the worst-case step peaks at {plan['peak_gb']:.2f} GB (grpolab "
                          f"plan), above the limit of {limit:.2f} GB; try {tries}")  # fmt: skip
    log(f"plan: the worst-case step peaks at {plan['peak_gb']:.2f} GB, within {limit:.2f} GB")
