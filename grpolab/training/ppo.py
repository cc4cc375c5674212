"""The PPO step (algorithm=ppo; ALGORITHMS.md section 7, as InstructGPT and DeepSeekMath ran it), beside the
GRPO one in `trainer.py` and sharing its rollout, rewards, micro-batches, policy pass, checkpoints and metrics.
It exists to measure what GRPO saves: here a value model as large as the policy is trained next to it.

    sample N prompts, G completions each (PPO usually takes G = 1; compare at equal completions per step)
    score them with the task's rule-based rewards
    old log-probs, reference log-probs (beta > 0) and old values V_old, once per rollout
    per-token rewards: the outcome reward on the last token - beta * k1 on every token
    GAE(gamma, lambda) -> advantages and returns; advantages whitened over the batch's tokens
    ppo.epochs passes, each: the clipped policy loss (GRPO's, per-token advantages, token mean) and the clipped
        value loss, both backward, each model's gradient clipped, one optimizer step (the value model's
        parameters are a group of their own, at ppo.value_learning_rate)

The loop around the step (evaluation, checkpoints, stopping) is `trainer.training_loop`, the same for both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from grpolab.algorithms.losses import KL_ESTIMATORS
from grpolab.algorithms.ppo import clipped_value_loss, gae, token_rewards, whiten
from grpolab.config import Config
from grpolab.parallel.distributed import Parallel
from grpolab.training.experience import ShapedBatch, batch_logprobs, loss_mask, publish_weights, step_rollout
from grpolab.training.metrics import Timer, step_metrics
from grpolab.training.micro_batches import micro_batches, score
from grpolab.training.optimisation import optimisation_pass


@dataclass
class PPOExperience:
    """What PPO's losses need besides the rollout: the policy loss's inputs and the value targets."""

    shaped: ShapedBatch  # loss mask, per-token advantages [B, T], old and reference log-probs
    old_values: torch.Tensor  # [B, T] V_old, fixed for the ppo.epochs passes
    returns: torch.Tensor  # [B, T] GAE returns, the value loss's targets
    stats: dict  # the whole batch's value / return / advantage statistics


def ppo_step(run, step: int, stream):
    """One PPO step; returns (metrics record, rollout batch), as `trainer.grpo_step` does."""
    config, policy, optimizer, parallel = run.config, run.policy, run.optimizer, run.parallel
    timer = Timer()
    batch, sampling_stats = step_rollout(run, step, stream, timer)
    experience = ppo_experience(run, batch, timer)
    policy.train()
    run.value_model.train()
    skipped, loss_config = 0, policy_loss_config(config)
    for epoch in range(config.ppo.epochs):
        optimizer.zero_grad(set_to_none=True)
        with timer("policy"):
            stats, current = optimisation_pass(
                run.scorer, batch, experience.shaped, loss_config, run.bf16, run.device, parallel
            )
        with timer("value"):
            value_stats = value_pass(run.value_model, batch, experience, config, run.bf16, run.device, parallel)
        with timer("optimizer"):
            grad_norm = parallel.clip_grad_norm(run.scorer, config.train.max_grad_norm)
            value_grad_norm = parallel.clip_grad_norm(run.value_model, config.train.max_grad_norm)
            finite = [grad_norm, value_grad_norm, stats["loss"], value_stats["value_loss"]]
            if all(math.isfinite(value) for value in finite):  # the same on every rank
                optimizer.step()  # the policy's and the value model's parameter groups together
            else:  # a non-finite update is skipped, never applied
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
        if epoch == 0:
            first = (stats, current, value_stats, grad_norm, value_grad_norm)
    run.scheduler.step()
    publish_weights(run, step, timer)
    stats, current, value_stats, grad_norm, value_grad_norm = first
    batch, current = parallel.gather_rollout(batch, current, run.tokenizer.pad_token_id)
    reset_every = config.grpo.ref_reset_every
    if run.reference is not None and reset_every and step % reset_every == 0:
        run.reference.reset()
    record = step_metrics(step, batch, stats, current, grad_norm, run.scheduler, timer)
    record.update(parallel.mean_dict({**sampling_stats, **experience.shaped.stats}), **experience.stats)
    record.update(value_stats, value_grad_norm=value_grad_norm, skipped_updates=skipped)
    return record, batch


def policy_loss_config(config: Config) -> Config:
    """GRPO's clipped surrogate with PPO's per-token advantages: (choice) the token mean over the batch, as
    InstructGPT-style PPO implementations aggregate; the KL is in the reward (logged, not added to the loss)."""
    grpo = dataclasses.replace(config.grpo, kl_in_reward=True, aggregation="token")
    return dataclasses.replace(config, grpo=grpo)


def ppo_experience(run, batch, timer) -> PPOExperience:
    """Old and reference log-probs, old values, per-token rewards, GAE advantages and returns."""
    config, parallel = run.config, run.parallel
    grpo, ppo, train = config.grpo, config.ppo, config.train
    share = (train.share_prompts, train.micro_batch_tokens)
    with timer("old_logprobs"):
        old = batch_logprobs(run.scorer, batch, train.scoring_batch_size, config.rollout.temperature, run.bf16,
                             run.device, *share)  # fmt: skip
    ref = None
    if run.reference is not None:
        with timer("reference"), run.reference.model() as model:
            ref = batch_logprobs(model, batch, train.scoring_batch_size, config.rollout.temperature, run.bf16,
                                 run.device, *share)  # fmt: skip
    with timer("values"):
        old_values = batch_values(run.value_model, batch, train.scoring_batch_size, run.bf16, run.device, *share)
    mask = loss_mask(batch, grpo.overlong_filter)
    kl = KL_ESTIMATORS["k1"](old, ref) if ref is not None else None  # [B, T]
    rewards = token_rewards(batch.rewards.reshape(-1), kl, mask, grpo.beta)
    advantages, returns = gae(rewards, old_values, mask, ppo.gamma, ppo.lam)
    rank_stats = {  # this rank's means (every rank holds as many rows): averaged over ranks by the step
        "kl_in_reward": (kl * mask).sum(1).mean().item() if kl is not None else 0.0,  # the KL the reward takes
        "overlong_filtered_frac": 1.0 - mask.any(1).float().mean().item() if grpo.overlong_filter else 0.0,
    }
    batch_stats = value_targets_stats(old_values, returns, advantages, mask, parallel)
    if ppo.whiten_advantages:
        advantages = whiten(advantages, mask, batch_moments(advantages, mask, parallel))
    shaped = ShapedBatch(mask, advantages, old, ref, rank_stats)
    return PPOExperience(shaped, old_values, returns, batch_stats)


def batch_moments(values: torch.Tensor, mask: torch.Tensor, parallel: Parallel) -> tuple[float, float]:
    """Mean and variance of `values` over the masked tokens of the whole batch, all ranks' rows."""
    mask = mask.float()
    total, squares, count = parallel.sum([(values * mask).sum().item(), (values**2 * mask).sum().item(),
                                          mask.sum().item()])  # fmt: skip
    mean = total / max(count, 1.0)
    return mean, max(squares / max(count, 1.0) - mean**2, 0.0)


def value_targets_stats(old_values, returns, advantages, mask, parallel: Parallel) -> dict:
    """The whole batch's value, return and advantage statistics (all ranks' tokens: the same on every rank)."""
    stats = {}
    for name, values in (("value", old_values), ("returns", returns), ("advantages", advantages)):
        mean, variance = batch_moments(values, mask, parallel)
        stats[f"{name}_mean"], stats[f"{name}_std"] = mean, variance**0.5
    _, residual = batch_moments(returns - old_values, mask, parallel)
    # 1 - Var(R - V) / Var(R) (`algorithms.ppo.explained_variance`, here over all ranks); undefined while every
    # return is the same: no key then, not a made-up number
    if stats["returns_std"] > 0:
        stats["explained_variance"] = 1.0 - residual / stats["returns_std"] ** 2
    return stats


@torch.no_grad()
def batch_values(value_model, batch, size: int, bf16: bool, device, share_prompts=False, max_tokens=0):
    """V_old of every completion token (no gradient), [B, T]."""
    out = torch.zeros_like(batch.sampling_logprobs)
    for part in micro_batches(batch, size, share_prompts, max_tokens):
        values, _ = score(value_model, part, temperature=1.0, bf16=bf16, device=device)
        out[part.rows, : part.width] = values.float().cpu()
    return out


def value_pass(value_model, batch, experience: PPOExperience, config: Config, bf16: bool, device, parallel):
    """One pass of the clipped value loss over the rollout in micro-batches, gradients accumulated exactly (the
    loss is a token mean over the whole batch, all ranks'). Returns the logged stats."""
    mask, train = experience.shaped.loss_mask, config.train
    (tokens,) = parallel.sum([float(mask.sum())])
    tokens = max(tokens, 1.0)
    totals = {"value_loss": 0.0, "value_clip_frac": 0.0}
    parts = list(micro_batches(batch, train.micro_batch_size, train.share_prompts, train.micro_batch_tokens))
    for index, part in enumerate(parts):
        rows, width = part.rows, part.width
        with parallel.accumulating(value_model, last=index == len(parts) - 1):
            values, _ = score(value_model, part, temperature=1.0, bf16=bf16, device=device)
            losses, clipped = clipped_value_loss(
                values.float(),
                experience.old_values[rows, :width].to(device),
                experience.returns[rows, :width].to(device),
                mask[rows, :width].to(device),
                config.ppo.value_clip,
            )
            loss = losses.sum() / tokens
            (loss * parallel.world_size if parallel.active else loss).backward()
        totals["value_loss"] += loss.item()
        totals["value_clip_frac"] += clipped.sum().item() / tokens
    return parallel.sum_dict(totals)


__all__ = ["PPOExperience", "ppo_step"]
