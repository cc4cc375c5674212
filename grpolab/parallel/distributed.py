"""Many processes through PyTorch's own stack: torchrun starts them, `torch.distributed` connects them (gloo on
CPU, nccl on GPUs, chosen by what the machine has), DDP or FSDP2 (`fully_shard`) trains. Without torchrun's
environment (RANK / WORLD_SIZE) nothing here does anything: one process, exactly as before.

How a GRPO step is split (data parallel; ALGORITHMS.md's normalisers are those of the WHOLE rollout batch):
- every rank draws the same prompts from the training stream and keeps its contiguous share, so the G completions
  of a prompt stay on one rank (group statistics are exact) and a resumed run skips the same examples on every rank;
- generation is seeded per engine call by the global index of its first prompt (`rollout.generation_batch`),
  so 2 ranks x 4 prompts sample what 1 rank sampling 4 prompts per call samples;
- advantages are computed on the gathered [N, G] rewards (exact `batch`-scale std), the loss normalisers
  (`token` / `sequence` counts) are summed over ranks, and each rank's loss is multiplied by the world size because
  DDP and FSDP average gradients: the summed gradient is the one-process gradient of the whole batch;
- metrics are computed on the gathered rollout, logged once by rank 0; only rank 0 writes the run folder.

Generation needs whole weights. With DDP each rank holds them and the engine samples from the policy itself.
With FSDP the engine holds an unsharded copy, refreshed after every optimizer step from the full state dict
(`get_model_state_dict(full_state_dict=True)`); it costs one model's memory per rank but works with any engine
that has `generate` / `sync_weights`, and generation then needs no collective calls, so ranks may stop at
different lengths. The FSDP reference model is a second sharded module; with LoRA (DDP only) it is the base.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from grpolab.config import Config
from grpolab.errors import ConfigError
from grpolab.rollout.sampling import concat_rollouts


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_world(config: Config, world_size: int) -> None:
    """What a run split over `world_size` processes cannot do, refused in one line before anything starts."""
    if config.parallel.cpu_offload and (config.parallel.strategy != "fsdp" or not torch.cuda.is_available()):
        raise ConfigError("parallel.cpu_offload: needs parallel.strategy=fsdp on GPUs")
    if config.rollout.prompts_per_step % world_size:
        raise ConfigError(
            f"rollout.prompts_per_step: {config.rollout.prompts_per_step} prompts cannot be shared equally by "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    if config.rollout.workers and world_size > 1:
        raise ConfigError("rollout.workers: one trainer process only for now (not under torchrun)")
    if config.grpo.dynamic_sampling and world_size > 1:
        raise ConfigError("grpo.dynamic_sampling: not supported with more than one process yet")
    if config.train.micro_batch_tokens and world_size > 1 and config.parallel.strategy == "fsdp":
        # FSDP reduce-scatters at every micro-batch: all ranks must run the same number of them
        raise ConfigError("train.micro_batch_tokens: not with parallel.strategy=fsdp (use train.micro_batch_size)")


@dataclass
class Parallel:
    """This process's place in the run, and the collective operations the trainer uses (no-ops alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    cpu_offload: bool = False
    device: torch.device = torch.device("cpu")
    active: bool = False  # a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives ------------------------------------------------------------------------------------------
    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)  # every rank has the same keys
        return dict(zip(keys, self.sum([values[k] for k in keys])))

    def mean_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Means over ranks of per-rank means (exact: every rank holds the same number of prompts)."""
        return {key: value / self.world_size for key, value in self.sum_dict(values).items()}

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def on_main(self, function):
        """Run `function` on rank 0 only; every rank returns its result or raises its error."""
        if not self.active:
            return function()
        outcome = [None]
        if self.is_main:
            try:
                outcome = [("ok", function())]
            except Exception as error:  # re-raised below, on every rank, so no rank waits forever
                outcome = [("error", error)]
        dist.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            raise value
        return value

    def local_main_first(self, function):
        """Run `function` on each machine's first process, then on the others (e.g. filling a model cache)."""
        if self.local_rank == 0:
            result = function()
            self.barrier()
            return result
        self.barrier()
        return function()

    def share(self, items: list) -> tuple[list, int]:
        """This rank's contiguous share of `items` and the global index of its first item."""
        size = len(items) // self.world_size
        return items[self.rank * size : (self.rank + 1) * size], self.rank * size

    def batch_wide(self, function, *tensors: torch.Tensor) -> torch.Tensor:
        """`function` of the whole batch's rows (each tensor gathered along dim 0), this rank's rows of it."""
        if not self.active:
            return function(*tensors)
        gathered = [torch.cat(parts) for parts in zip(*self.gather([t.cpu() for t in tensors]))]
        size = tensors[0].shape[0]
        return function(*gathered)[self.rank * size : (self.rank + 1) * size]

    def gather_rollout(self, batch, logprobs: torch.Tensor, pad_id: int):
        """The whole rollout batch and the trainer's log-probs [B, T] of it, ranks in order, on every rank."""
        if not self.active:
            return batch, logprobs
        parts = self.gather((batch, logprobs))
        width = max(part.shape[1] for _, part in parts)
        logprobs = torch.cat([torch.nn.functional.pad(part, (0, width - part.shape[1])) for _, part in parts])
        return concat_rollouts([part for part, _ in parts], pad_id), logprobs

    # -- models -----------------------------------------------------------------------------------------------
    def data_parallel(self, scorer):
        """DDP around `scorer` (gradients all-reduced across ranks); alone, `scorer` itself."""
        if not self.active:
            return scorer
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(scorer, device_ids=ids)

    def shard(self, scorer, bf16: bool):
        """FSDP2: each decoder layer its own unit (gathered one at a time), the rest in the root unit."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        options = {"mesh": init_device_mesh(self.device.type, (self.world_size,))}
        if bf16:  # bf16 compute, fp32 master weights and fp32 gradient reduction
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if self.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        layer_types = {name for module in scorer.modules() for name in getattr(module, "_no_split_modules", None) or []}
        for module in scorer.modules():
            if type(module).__name__ in layer_types:
                fully_shard(module, **options)
        return fully_shard(scorer, **options)

    def accumulating(self, scorer, last: bool):
        """DDP: reduce gradients once, at the last micro-batch. FSDP reduce-scatters each (sharded accumulation)."""
        if self.active and self.strategy == "ddp" and not last:
            return scorer.no_sync()
        return contextlib.nullcontext()

    def clip_grad_norm(self, scorer, max_norm: float) -> float:
        """The gradients' global norm, after clipping them to `max_norm` (0: measured, not clipped)."""
        norm = torch.nn.utils.clip_grad_norm_(scorer.parameters(), max_norm or math.inf)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def sync_rollout_model(self, scorer, rollout_model) -> None:
        """FSDP: copy the gathered full weights into the engine's unsharded model (a collective call)."""
        if not (self.active and self.strategy == "fsdp"):
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(scorer, options=StateDictOptions(full_state_dict=True))
        rollout_model.load_state_dict({name.removeprefix("model."): value for name, value in state.items()})

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def leave_worker() -> None:
    """End a torchrun worker whose run finished and was written: flush and `os._exit(0)`, skipping interpreter
    finalisation. gloo's threads (gloo_tcp_loop, pt_gloo_runloop) are still running after destroy_process_group
    (seen in /proc/self/task at exit), and tearing the interpreter down around them occasionally aborted a rank
    (SIGABRT, "terminate called without an active exception") after a complete run: a failed exit for a
    finished job. Nothing is left to finalise here: the trainer closed its files, trackers and reward workers."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def init(config: Config) -> Parallel:
    """Join torchrun's process group when launched by it; otherwise one process, no group."""
    if not launched_by_torchrun():
        check_world(config, 1)
        return Parallel()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    check_world(config, world_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if rank != 0:  # one progress bar per run, not one per rank
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    parallel = config.parallel
    return Parallel(rank, world_size, local_rank, parallel.strategy, parallel.cpu_offload, device, active=True)


def silenced(config: Config) -> Config:
    """The config a rank other than 0 runs with: it prints, tracks and reports nothing (rank 0 does)."""
    log = dataclasses.replace(
        config.log, quiet=True, tensorboard=False, wandb=False, trackio=False, report=False, samples_every=0
    )
    return dataclasses.replace(config, log=log)


class Silent:
    """Stands in for rank 0's writers (metrics, tracker, progress) on the other ranks: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
