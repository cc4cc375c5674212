"""Per-step metrics of a GRPO run: the phase timer, the record written to metrics.jsonl, the summary line."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


def summary_line(results: dict, run_dir: Path) -> str:
    before = results.get("before", {}).get("accuracy")
    after = results.get("after", {}).get("accuracy")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    return f"held-out accuracy (n={results['n']}): before {fmt(before)} -> after {fmt(after)}; run folder: {run_dir}"


class Timer:
    """Per-phase wall-clock seconds of one step. `Timer.current` names the phase running now (None between
    phases), for tools that attribute work to phases (`bench step --floor`)."""

    current: str | None = None
    watch = None  # a context manager factory run around every phase (`grpolab plan`'s memory per phase)

    def __init__(self):
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        begin, outer = time.perf_counter(), Timer.current
        Timer.current = phase
        try:
            with Timer.watch(phase) if Timer.watch else contextlib.nullcontext():
                yield
        finally:
            Timer.current = outer
        self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - begin

    def total(self) -> float:
        return time.perf_counter() - self.start


def step_metrics(step, batch, stats, trainer_logprobs, grad_norm, scheduler, timer) -> dict:
    mask = batch.completion_mask.float()
    lengths = mask.sum(1)
    rewards = batch.rewards
    seconds = timer.total()
    record = {
        "step": step,
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "accuracy": sum(batch.correct) / len(batch.correct),
        "kl": stats.get("kl", 0.0),
        "loss": stats["loss"],
        "entropy": stats.get("entropy", 0.0),
        "clip_low_frac": stats["clip_low_frac"],
        "clip_high_frac": stats["clip_high_frac"],
        "grad_norm": grad_norm,
        "learning_rate": scheduler.get_last_lr()[0],
        "completion_len_mean": lengths.mean().item(),
        "truncated_frac": sum(c.finish_reason == "length" for c in batch.completions) / len(batch.completions),
        "rollout_weight_mean": stats.get("rollout_weight_mean", 1.0),
        "rollout_weight_capped_frac": stats.get("rollout_weight_capped_frac", 0.0),
        "rollout_weight_masked_frac": stats.get("rollout_weight_masked_frac", 0.0),
        "logprob_mismatch": ((batch.sampling_logprobs - trainer_logprobs).abs() * mask).sum().item()
        / max(1.0, mask.sum().item()),
        "reward_errors": batch.reward_errors,  # calls scored 0 under reward.on_error=zero
        "step_seconds": seconds,
        "tokens_per_second": mask.sum().item() / seconds,
    }
    for name, values in batch.reward_parts.items():
        present = [v for v in values if v is not None]
        record[f"rewards/{name}"] = sum(present) / len(present) if present else None
    for phase, value in timer.phases.items():
        record[f"time/{phase}"] = value
    return record
