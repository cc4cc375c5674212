"""A step's rollout (`step_rollout`) and its experience: what the loss needs besides the rollout itself
(ALGORITHMS.md sections 1 and 3): the loss mask (DAPO's overlong filtering), old / reference log-probs, and
the advantages, chosen in one place (`shape_batch`: online RFT's 1[correct], process supervision's step
rewards mapped to tokens, or an outcome estimator of `grpolab.algorithms.advantages`). DAPO's soft overlong
punishment is the `overlong` reward function (`reward.weights.overlong`, grpolab/rewards/optional.py).

It works on `RolloutBatch` objects; the maths each step uses lives in `grpolab.algorithms` as pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpolab.algorithms.advantages import (
    compute_advantages,
    process_batch_advantages,
    rft_coefficients,
    token_index_of_char,
)
from grpolab.algorithms.distillation import reverse_kl_advantages
from grpolab.algorithms.losses import KL_ESTIMATORS
from grpolab.algorithms.shaping import kl_penalised_rewards, overlong_loss_mask
from grpolab.config import Config
from grpolab.model.scoring import as_scorer
from grpolab.rollout.batch import RolloutBatch
from grpolab.rollout.sampling import sample_rollout
from grpolab.training.micro_batches import micro_batches, score


def step_rollout(run, step: int, stream, timer):
    """The step's rollout (`rollout/sampling.sample_rollout`), the policy in eval mode; returns (batch, sampling
    stats). `time/generate` counts the engine alone (the rewards have their own phase). With rollout workers
    the rollout comes from one of them (`training/async_rollouts.py`)."""
    if run.rollouts is not None:
        return run.rollouts.rollout(run, step, stream, timer)
    with timer("generate"):
        run.policy.eval()
        batch, stats = sample_rollout(
            run.engine, run.tokenizer, run.task, stream, run.rewards, run.config, step, run.parallel.share, timer
        )
    timer.phases["generate"] -= timer.phases.get("rewards", 0.0)
    return batch, stats


def publish_weights(run, step: int, timer) -> None:
    """After the optimizer step: the engine (or the rollout workers) samples from the new weights."""
    if run.rollouts is not None:
        run.rollouts.publish(run, step, timer)
    else:
        run.engine.sync_weights(run.rollout_model)


def truncated(batch: RolloutBatch) -> torch.Tensor:
    """[B] bool: completions cut at the length limit (no stop token)."""
    return torch.tensor([c.finish_reason == "length" for c in batch.completions])


def loss_mask(batch: RolloutBatch, overlong_filter: bool) -> torch.Tensor:
    """The mask of tokens that enter the loss: the completion mask, minus truncated rows when filtering."""
    if not overlong_filter:
        return batch.completion_mask
    return overlong_loss_mask(batch.completion_mask, truncated(batch))


def scored_mask(batch: RolloutBatch) -> torch.Tensor:
    """[N, G] bool: completions at least one reward function applied to (others get advantage 0)."""
    rows = len(batch.completions)
    scored = [any(values[row] is not None for values in batch.reward_parts.values()) for row in range(rows)]
    if not batch.reward_parts:
        scored = [True] * rows
    return torch.tensor(scored).view_as(batch.rewards)


def token_char_ends(tokenizer, token_ids: list[int]) -> list[int]:
    """Length of the text decoded from tokens 0..k, for every k (decoded as the engine decodes the text)."""
    return [len(tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)) for k in range(len(token_ids))]


def process_advantages_for_batch(batch: RolloutBatch, task, tokenizer) -> torch.Tensor:
    """Process supervision: the task's step rewards, each placed at the token that ends its step,
    normalised per group and summed into token advantages. Returns [B, T]."""
    size = batch.group_size
    step_rewards, step_ends = [], []
    for row, completion in enumerate(batch.completions):
        steps = task.step_rewards(completion.text, batch.examples[row // size]) or []
        ends = token_char_ends(tokenizer, completion.token_ids)
        step_rewards.append([reward for _, reward in steps])
        step_ends.append([token_index_of_char(ends, char_end) for char_end, _ in steps])
    return process_batch_advantages(step_rewards, step_ends, size, batch.completion_ids.shape[1])


@torch.no_grad()
def batch_logprobs(
    model, batch, size: int, temperature: float, bf16: bool, device, share_prompts: bool = False, max_tokens: int = 0
):
    """Log-probs of the rollout's tokens under `model` (no gradient), [B, T]."""
    out = torch.zeros_like(batch.sampling_logprobs)
    scorer = as_scorer(model)
    for part in micro_batches(batch, size, share_prompts, max_tokens):
        logprobs, _ = score(scorer, part, temperature=temperature, bf16=bf16, device=device)
        out[part.rows, : part.width] = logprobs.float().cpu()
    return out


@dataclass
class ShapedBatch:
    """What the loss needs besides the rollout itself."""

    loss_mask: torch.Tensor  # [B, T] completion mask, minus overlong-filtered rows
    advantages: torch.Tensor  # [B, 1] outcome / online RFT, or [B, T] process supervision
    old_logprobs: torch.Tensor | None  # [B, T], None when mu = 1 and the KL is not in the reward
    ref_logprobs: torch.Tensor | None  # [B, T], None when beta = 0
    stats: dict


def shape_batch(
    policy, reference, batch, task, tokenizer, config: Config, bf16: bool, device, timer, batch_wide=None
) -> ShapedBatch:
    """Loss mask, old and reference log-probs, and advantages for one rollout batch. `batch_wide(f, *rows)` applies
    f to the rows of the whole batch when it is split between processes (grpolab/parallel/distributed.py)."""
    batch_wide = batch_wide or (lambda function, *tensors: function(*tensors))
    grpo, size, temperature = config.grpo, config.train.scoring_batch_size, config.rollout.temperature
    share = (config.train.share_prompts, config.train.micro_batch_tokens)
    old_logprobs = ref_logprobs = None
    distilling = config.algorithm == "on_policy_distill"
    if grpo.mu > 1 or grpo.kl_in_reward or distilling:  # fixed for the mu passes; with mu = 1 the pass uses its own
        with timer("old_logprobs"):
            old_logprobs = batch_logprobs(policy, batch, size, temperature, bf16, device, *share)
    if reference is not None:
        with timer("reference"), reference.model() as model:
            ref_logprobs = batch_logprobs(model, batch, size, temperature, bf16, device, *share)
    rewards, stats = batch.rewards, {}
    if grpo.kl_in_reward:
        kl = KL_ESTIMATORS[grpo.kl_estimator](old_logprobs, ref_logprobs)  # [B, T]
        rewards, sequence_kl = kl_penalised_rewards(rewards, kl, batch.completion_mask, grpo.beta)
        stats["kl_in_reward"] = sequence_kl.mean().item()
    if distilling:  # the teacher in the reference's place; the reward plays no part
        advantages = reverse_kl_advantages(old_logprobs, ref_logprobs, batch.completion_mask)  # [B, T]
        stats["distill/reverse_kl"] = -(advantages.sum() / batch.completion_mask.sum().clamp(min=1)).item()
    elif config.algorithm == "online_rft":  # DeepSeekMath section 5: coefficient 1 on correct samples
        advantages = rft_coefficients(batch.correct).unsqueeze(1)  # [B, 1]
    elif grpo.advantage == "process":
        advantages = process_advantages_for_batch(batch, task, tokenizer)  # [B, T]
    else:
        scored = scored_mask(batch)  # [N, G]
        estimate = lambda rewards, scored: compute_advantages(rewards, grpo.advantage, scored)
        advantages = batch_wide(estimate, rewards, scored).reshape(-1, 1)  # [N, G] -> [B, 1]
    mask = loss_mask(batch, grpo.overlong_filter)
    stats["overlong_filtered_frac"] = 1.0 - mask.any(1).float().mean().item() if grpo.overlong_filter else 0.0
    return ShapedBatch(mask, advantages, old_logprobs, ref_logprobs, stats)
