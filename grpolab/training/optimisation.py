"""The policy pass both loops share (`trainer.grpo_step`, `ppo.ppo_step`): the clipped-surrogate loss over the
rollout in micro-batches, with exact gradient accumulation to the full-batch loss (all ranks')."""

from __future__ import annotations

import math

import torch

from grpolab.algorithms.objective import Normalisers, grpo_loss
from grpolab.config import Config
from grpolab.errors import TrainingError
from grpolab.model.scoring import as_scorer
from grpolab.parallel.distributed import Parallel
from grpolab.training.micro_batches import micro_batches, score


def optimisation_pass(policy, batch, shaped, config: Config, bf16: bool, device, parallel: Parallel | None = None):
    """One pass over the rollout in micro-batches, accumulating gradients of the full-batch loss (all ranks')."""
    parallel, scorer = parallel or Parallel(), as_scorer(policy)
    mask, advantages = shaped.loss_mask, shaped.advantages  # [B, T], [B, 1] or [B, T]
    old_logprobs, ref_logprobs = shaped.old_logprobs, shaped.ref_logprobs
    sequences, tokens = parallel.sum([float(mask.any(1).sum()), float(mask.sum())])  # of the whole batch
    normalisers = Normalisers(max(1, int(sequences)), tokens, config.rollout.max_new_tokens)
    totals: dict[str, float] = {"loss": 0.0}
    current = torch.zeros_like(batch.sampling_logprobs)
    train = config.train
    parts = list(micro_batches(batch, train.micro_batch_size, train.share_prompts, train.micro_batch_tokens))
    if train.optimizer_in_backward and len(parts) > 1:  # Config.validate refuses the settings that lead here
        raise TrainingError(f"train.optimizer_in_backward: the rollout split into {len(parts)} micro-batches")
    for index, part in enumerate(parts):
        rows, width = part.rows, part.width
        with parallel.accumulating(scorer, last=index == len(parts) - 1):
            logprobs, entropy = score(
                scorer, part, temperature=config.rollout.temperature, bf16=bf16, device=device, with_entropy=True,
                entropy_grad=bool(config.grpo.entropy_coef),
            )  # fmt: skip
            logprobs = logprobs.float()
            old = logprobs.detach() if old_logprobs is None else old_logprobs[rows, :width].to(device)
            ref = None if ref_logprobs is None else ref_logprobs[rows, :width].to(device)
            row_advantages = advantages[rows, : width if advantages.shape[1] > 1 else 1].to(device)
            row_mask = mask[rows, :width].to(device)
            sampling = batch.sampling_logprobs[rows, :width].to(device)
            loss, stats = grpo_loss(
                logprobs, old, ref, row_advantages, row_mask, config.grpo, normalisers, entropy.float(), sampling
            )
            # DDP and FSDP average the ranks' gradients; the loss is a sum over the whole batch's ranks
            (loss * parallel.world_size if parallel.active else loss).backward()
        share = row_mask.sum().item() / max(normalisers.num_tokens, 1.0)  # token-weighted share for logging means
        totals["loss"] += loss.item()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value * share
        current[rows, :width] = logprobs.detach().cpu()
    for parameter in scorer.parameters():  # a tied embedding's sparse rows with no dense head gradient to join
        if parameter.grad is not None and parameter.grad.is_sparse:
            parameter.grad = parameter.grad.to_dense()
    return parallel.sum_dict(totals), current


def apply_update(run, loss: float) -> tuple[float, bool]:
    """The optimizer step after a pass's backward: (gradient norm, whether the update was applied). The
    gradients are clipped to `train.max_grad_norm`; a non-finite loss or norm skips the update. With
    `train.optimizer_in_backward` the updates already ran in the backward pass: this only reads their norm."""
    if run.step_in_backward is not None:
        norm = run.step_in_backward.end()
        run.optimizer.step()  # updates nothing (no gradient is left); the schedule sees the step it follows
        return norm, math.isfinite(norm)
    norm = run.parallel.clip_grad_norm(run.scorer, run.config.train.max_grad_norm)
    applied = math.isfinite(norm) and math.isfinite(loss)  # the same on every rank
    if applied:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)  # gradients are not held through the next rollout
    return norm, applied
