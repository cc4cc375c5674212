"""The trainer's side of `rollout.workers=N` (the workers are `grpolab/rollout/workers.py`): each step's prompts
are drawn from the training stream in step order and handed out as jobs up to `rollout.max_staleness` steps
ahead, the step trains on its job's rollout, and after the optimizer step the new weights are published.

What a step logs (besides the usual): `async/staleness` (optimizer steps between the weights that sampled the
rollout and the policy it trains), `async/version`, the worker's `async/worker_idle_s` (waiting for a job or for
weights), `async/worker_sync_s` (receiving weights) and `async/worker_sample_s` (generation + rewards), and the
trainer's own `time/wait_rollout` (idle) and `time/weight_sync` (flattening and starting the broadcast).
"""

from __future__ import annotations

import torch

from grpolab.errors import TrainingError
from grpolab.rollout.workers import WorkerPool


class WorkerRollouts:
    def __init__(self, run, version: int):
        self.config = run.config
        self.pool = WorkerPool(run.config, run.rollout_model, wire_dtype(run.engine), version)
        self.first_version = version
        self.submitted = version  # the last step whose job was handed out
        self.consumed_at: dict[int, int] = {}
        self.consumed = None  # examples drawn up to the step trained last (what a checkpoint records)

    def rollout(self, run, step: int, stream, timer):
        """(batch, sampling stats) of `step`, sampled by a worker with weights at most k steps old."""
        k, rollout = self.config.rollout.max_staleness, self.config.rollout
        while self.submitted < min(step + k, self.config.train.max_steps):
            job = self.submitted + 1
            examples = [next(stream) for _ in range(rollout.prompts_per_step)]
            self.consumed_at[job] = stream.consumed
            self.pool.submit(job, examples, min_version=max(job - 1 - k, self.first_version))
            self.submitted = job
        with timer("wait_rollout"):
            batch, stats, info = self.pool.result(step)
        staleness = step - 1 - info["version"]
        if staleness > k:  # the job asked for a version this recent: a worker that broke the rule is a bug
            raise TrainingError(f"step {step}: rollout sampled by version {info['version']}, {staleness} steps old")
        self.consumed = self.consumed_at.pop(step)
        stats = {**stats, "async/staleness": staleness, "async/version": info["version"],
                 "async/worker_idle_s": info["idle_s"], "async/worker_sync_s": info["sync_s"],
                 "async/worker_sample_s": info["sample_s"]}  # fmt: skip
        return batch, stats

    def publish(self, run, step: int, timer) -> None:
        with timer("weight_sync"):
            self.pool.publish(step, run.rollout_model)

    def close(self, graceful: bool = True) -> None:
        self.pool.close(graceful)


def wire_dtype(engine):
    """The dtype the engine computes in (its packed copy's), or the trainer's fp32 for engines without one."""
    return getattr(engine, "dtype", torch.float32)
