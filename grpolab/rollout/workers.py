"""Rollout workers apart from the trainer (`rollout.workers=N`): N processes that only run the rollout engine
and the reward functions, while the trainer only trains.

    trainer (rank 0)                                    worker (rank 1..N)
      job (step s, its prompts, min version) --queue-->   newest published weights (>= min version)
                                                          sample_rollout(...) exactly as the trainer would
      <---------------------------------queue--------     (s, version used, RolloutBatch, timings)
      optimizer step s, then publish version s ---gloo broadcast (async), one flat tensor--->

Versions: version v is the policy after optimizer step v (a fresh run starts at 0, a resumed one at its step).
Step s may train on a rollout sampled by version v only if (s - 1) - v <= rollout.max_staleness (k); its job asks
for version >= s - 1 - k. With k = 0 every rollout is sampled by the weights the synchronous loop would use, through
the same `sample_rollout` seeded by step and prompt index, so `rollout.workers=1` gives the run `rollout.workers=0`
gives (bitwise on CPU with the same thread counts; tests/runs/test_rollout_workers.py).
(choice) A worker samples with the newest version published when it starts a job, not the oldest allowed one:
fresher samples, at the price that with k >= 1 which version a step gets depends on timing.

The weights travel in the engine's compute dtype (bf16 where the engine packs bf16: half the bytes; the engine
then holds exactly what it would have cast itself), as one flat tensor broadcast over a gloo process group of
the trainer and its workers. The trainer's broadcast is asynchronous: it keeps training while a busy worker
has not received yet; a worker receives every version in order before its next job.

Faults: a worker that dies (or raises) ends the run with one line; the trainer saves the last finished step
(`training/trainer.py`), so `grpolab train --resume` continues with new workers. Workers ignore SIGINT / SIGTERM
(the trainer stops them at a step boundary, after its checkpoint) and are killed by the kernel if the trainer
dies (PR_SET_PDEATHSIG): no orphans. (not yet) workers on other machines or GPUs (nccl); a worker restarted in
place (a gloo group cannot take a new member, so it would have to be rebuilt by every process).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shutil
import signal
import tempfile
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grpolab.errors import TrainingError

GROUP_TIMEOUT = timedelta(minutes=30)  # a broadcast waits this long for a worker busy with a long rollout
POLL_SECONDS = 0.2


class WorkerDied(TrainingError):
    """A rollout worker exited or raised; the trainer stops with a checkpoint of its last finished step."""


def flat_weights(model, dtype: torch.dtype) -> torch.Tensor:
    """Every parameter of `model`, in `model.parameters()` order, as one 1-D tensor of `dtype`."""
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in model.parameters()])


def load_flat_weights(model, flat: torch.Tensor) -> None:
    """The inverse of `flat_weights`: copy the slices of `flat` into `model`'s parameters."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


class WorkerPool:
    """The trainer's side: starts the workers, hands out jobs, collects rollouts, publishes weights."""

    def __init__(self, config, model, wire_dtype: torch.dtype, version: int):
        workers = config.rollout.workers
        self.context = mp.get_context("spawn")
        self.store_dir = tempfile.mkdtemp(prefix="grpolab-workers-")
        store = f"file://{os.path.join(self.store_dir, 'store')}"
        self.jobs, self.results = self.context.Queue(), self.context.Queue()
        self.published = self.context.Value("q", version)
        self.stopping = self.context.Event()  # set on close: jobs still queued are dropped, not sampled
        self.wire_dtype, self.pending, self.received = wire_dtype, [], {}
        self.processes = [
            self.context.Process(
                target=worker_main,
                args=(rank, workers + 1, store, config, self.queues(), version, wire_dtype),
                name=f"grpolab-rollout-worker-{rank}",
            )
            for rank in range(1, workers + 1)
        ]
        for process in self.processes:
            process.start()
        try:
            dist.init_process_group("gloo", init_method=store, rank=0, world_size=workers + 1, timeout=GROUP_TIMEOUT)
            self.publish(version, model)  # the first weights: the fresh or resumed policy
        except Exception:
            self.close(graceful=False)
            raise

    def queues(self) -> tuple:
        return self.jobs, self.results, self.published, self.stopping

    def submit(self, step: int, examples: list[dict], min_version: int) -> None:
        self.jobs.put((step, examples, min_version))

    def result(self, step: int) -> tuple:
        """(batch, sampling stats, worker info) of `step`'s job, waiting for it; raises WorkerDied."""
        while step not in self.received:
            try:
                message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self.check_alive()
                continue
            if message[0] == "error":
                raise WorkerDied(f"rollout worker {message[1]} failed: {message[2]}")
            _, got_step, batch, stats, info = message
            self.received[got_step] = (batch, stats, info)
        return self.received.pop(step)

    def check_alive(self) -> None:
        for rank, process in enumerate(self.processes, start=1):
            if not process.is_alive():
                raise WorkerDied(f"rollout worker {rank} died (exit code {process.exitcode})")

    def publish(self, version: int, model) -> None:
        """Broadcast `model`'s weights as `version` without waiting for the workers to receive them."""
        flat = flat_weights(model, self.wire_dtype)
        work = dist.broadcast(flat, src=0, async_op=True)
        self.pending = [(w, t) for w, t in self.pending if not w.is_completed()] + [(work, flat)]
        self.published.value = version

    def close(self, graceful: bool = True) -> None:
        """Stop the workers: graceful, they first receive every published version (so no broadcast is left
        half-done) and exit; otherwise (a worker died) they are killed. Never waits more than a few seconds
        beyond a rollout in progress."""
        self.stopping.set()
        for _ in self.processes:
            self.jobs.put(None)
        deadline = time.monotonic() + (GROUP_TIMEOUT.total_seconds() if graceful else 5)
        for process in self.processes:
            while process.is_alive() and time.monotonic() < deadline:
                process.join(POLL_SECONDS)
                if any(not p.is_alive() and p.exitcode != 0 for p in self.processes):
                    deadline = min(deadline, time.monotonic() + 5)  # one died: the rest cannot finish a broadcast
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join()
        clean = graceful and all(p.exitcode == 0 for p in self.processes)
        if clean:
            for work, _ in self.pending:
                work.wait()
        self.pending = []
        if dist.is_initialized() and clean:  # a group with a dead member is left to the process's exit
            dist.destroy_process_group()
        shutil.rmtree(self.store_dir, ignore_errors=True)


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent (the trainer) dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def worker_main(rank, world_size, store, config, queues, version, wire_dtype) -> None:
    """A worker's life: join the group, build the engine and rewards, then jobs until told to stop."""
    jobs, results, published, stopping = queues
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()
    torch.set_num_threads(config.rollout.worker_threads)
    try:
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size, timeout=GROUP_TIMEOUT)
        Worker(config, published, version, wire_dtype).serve(jobs, results, stopping)
    except Exception as error:  # reported to the trainer in one line, then this process ends
        line = f"{type(error).__name__}: {error}".splitlines()[0]
        results.put(("error", rank, line, traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)
    results.close()
    results.join_thread()  # the last rollout is written before the exit
    os._exit(0)  # skip interpreter finalisation around gloo's threads (see parallel/distributed.leave_worker)


class Worker:
    """One worker's engine, model copy, task and rewards."""

    def __init__(self, config, published, version: int, wire_dtype):
        from grpolab.engine import make_engine
        from grpolab.model.attention import use_cpu_attention
        from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path
        from grpolab.model.lora import apply_lora
        from grpolab.rewards.runner import RewardRunner, resolve_weights
        from grpolab.tasks import get_task

        self.config, self.published = config, published
        self.version = version - 1  # the first broadcast is `version`
        self.task = get_task(config.task, config.reward, config.template)
        reward = config.reward
        weights = resolve_weights(self.task, reward.weights)
        self.rewards = RewardRunner(
            self.task.reward_functions(), weights, reward.on_error, reward.timeout_seconds, reward.num_workers
        )
        path = resolve_model_path(config.model)
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path).eval().requires_grad_(False)
        if config.train.attention == "auto":
            use_cpu_attention(self.model)
        if config.lora.rank:  # the same parameters as the trainer's policy, filled by the first broadcast
            lora = config.lora
            self.model = apply_lora(self.model, lora.rank, lora.alpha, lora.dropout, lora.target_modules).eval()
        self.flat = flat_weights(self.model, wire_dtype)
        self.engine = make_engine(
            config.rollout.engine, self.model, self.tokenizer, config.rollout.dtype, config.rollout.share_weights
        )

    def receive(self, target: int) -> None:
        """Receive the broadcasts up to version `target` (in order), then load the last into the engine."""
        if self.version >= target:
            return
        while self.version < target:
            dist.broadcast(self.flat, src=0)
            self.version += 1
        load_flat_weights(self.model, self.flat)
        self.engine.sync_weights(self.model)

    def serve(self, jobs, results, stopping) -> None:
        from grpolab.rollout.sampling import sample_rollout

        try:
            while True:
                idle_start = time.perf_counter()
                job = jobs.get()
                if job is None or stopping.is_set():
                    self.receive(self.published.value)  # the trainer waits for every broadcast it started
                    return
                step, examples, min_version = job
                while self.published.value < min_version:
                    time.sleep(0.002)
                idle = time.perf_counter() - idle_start
                start = time.perf_counter()
                self.receive(self.published.value)
                sync = time.perf_counter() - start
                start = time.perf_counter()
                batch, stats = sample_rollout(
                    self.engine, self.tokenizer, self.task, iter(examples), self.rewards, self.config, step
                )
                info = {"version": self.version, "idle_s": idle, "sync_s": sync,
                        "sample_s": time.perf_counter() - start}  # fmt: skip
                results.put(("rollout", step, batch, stats, info))
        finally:
            self.rewards.close()
