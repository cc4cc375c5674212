"""From the engine to what the loss needs (ALGORITHMS.md sections 1 and 3): sampling the rollout (with DAPO's
dynamic sampling), overlong filtering, old / reference log-probs, advantages, and the step rewards of
process supervision mapped to tokens. DAPO's soft overlong punishment is the `overlong` reward function
(`reward.weights.overlong`, grpolab/rewards/optional.py).

It works on `RolloutBatch` objects; the maths each step uses lives in `grpolab.algorithms` as pure functions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from grpolab.algorithms.advantages import (
    compute_advantages,
    process_batch_advantages,
    rft_coefficients,
    token_index_of_char,
)
from grpolab.algorithms.logprobs import as_scorer
from grpolab.algorithms.losses import KL_ESTIMATORS
from grpolab.algorithms.shaping import kl_penalised_rewards, overlong_loss_mask, zero_variance_groups
from grpolab.config import Config
from grpolab.engine import SamplingParams
from grpolab.rollout import RolloutBatch, collect_rollout, micro_batches


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


def _trim(prompt_ids, prompt_mask, completion_ids, completion_mask, sampling_logprobs):
    """Drop the padding columns no row uses any more (left of the prompts, right of the completions)."""
    used = (prompt_mask.sum(0) > 0).nonzero()
    first = int(used.min()) if used.numel() else 0
    last = max(1, int(completion_mask.sum(1).max()))
    return (
        prompt_ids[:, first:],
        prompt_mask[:, first:],
        completion_ids[:, :last],
        completion_mask[:, :last],
        sampling_logprobs[:, :last],
    )


def select_groups(batch: RolloutBatch, groups: list[int]) -> RolloutBatch:
    """The sub-batch holding only the listed groups (prompt indices), padding trimmed."""
    size = batch.group_size
    rows = [g * size + j for g in groups for j in range(size)]
    index = torch.tensor(rows, dtype=torch.long)
    tensors = _trim(
        batch.prompt_ids[index],
        batch.prompt_mask[index],
        batch.completion_ids[index],
        batch.completion_mask[index],
        batch.sampling_logprobs[index],
    )
    return RolloutBatch(
        [batch.examples[g] for g in groups],
        [batch.completions[r] for r in rows],
        *tensors,
        rewards=batch.rewards[torch.tensor(groups, dtype=torch.long)],
        reward_parts={name: [values[r] for r in rows] for name, values in batch.reward_parts.items()},
        correct=[batch.correct[r] for r in rows],
    )


def _pad_to(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    pad = tensor.new_full((tensor.shape[0], width - tensor.shape[1]), value)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def concat_rollouts(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch from several (same group size): prompts re-left-padded, completions re-right-padded."""
    if len(batches) == 1:
        return batches[0]
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    completion_width = max(b.completion_ids.shape[1] for b in batches)
    cat = lambda name, width, value, left: torch.cat([_pad_to(getattr(b, name), width, value, left) for b in batches])
    names = {name for b in batches for name in b.reward_parts}
    return RolloutBatch(
        [e for b in batches for e in b.examples],
        [c for b in batches for c in b.completions],
        cat("prompt_ids", prompt_width, pad_id, True),
        cat("prompt_mask", prompt_width, 0, True),
        cat("completion_ids", completion_width, pad_id, False),
        cat("completion_mask", completion_width, 0, False),
        cat("sampling_logprobs", completion_width, 0.0, False),
        rewards=torch.cat([b.rewards for b in batches]),
        reward_parts={
            n: [v for b in batches for v in b.reward_parts.get(n, [None] * len(b.completions))] for n in names
        },
        correct=[c for b in batches for c in b.correct],
        reward_errors=sum(b.reward_errors for b in batches),
        reward_error_messages=[m for b in batches for m in b.reward_error_messages][:3],
    )


def dynamic_sampling(generate, draw, num_groups: int, max_rounds: int, pad_id: int):
    """DAPO dynamic sampling: keep only groups whose rewards differ; draw more prompts until `num_groups`
    groups are kept or `max_rounds` generation rounds have run. Returns (batch, stats).

    `draw(n)` gives n new examples, `generate(examples)` a scored RolloutBatch. Each round asks for exactly
    the missing number of groups. (choice) A batch still short after the last round trains on what it has;
    if no group at all had signal, it trains on the last round unfiltered (advantages 0: only the KL and
    entropy terms act) rather than skipping the step.
    """
    kept, last, dropped, generated, rounds = [], None, 0, 0, 0
    while rounds < max_rounds and sum(len(b.examples) for b in kept) < num_groups:
        missing = num_groups - sum(len(b.examples) for b in kept)
        last = generate(draw(missing))
        rounds += 1
        zero = zero_variance_groups(last.rewards)  # [n]
        keep = [g for g in range(len(zero)) if not zero[g]]
        dropped += len(zero) - len(keep)
        generated += len(zero)
        if keep:
            kept.append(select_groups(last, keep))
    batch = concat_rollouts(kept, pad_id) if kept else last
    stats = {"groups_dropped": dropped, "sampling_rounds": rounds, "zero_std_groups_frac": dropped / generated}
    return batch, stats


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


def autocast_context(bf16: bool, on: torch.device):
    return torch.autocast(on.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def batch_logprobs(
    model, batch, size: int, temperature: float, bf16: bool, on, share_prompts: bool = False, max_tokens: int = 0
):
    """Log-probs of the rollout's tokens under `model` (no gradient), [B, T]."""
    out = torch.zeros_like(batch.sampling_logprobs)
    scorer = as_scorer(model)
    for rows, (p_ids, p_mask, c_ids, c_mask, index) in micro_batches(batch, size, share_prompts, max_tokens):
        index = None if index is None else index.to(on)
        with autocast_context(bf16, on):
            logprobs, _ = scorer(
                p_ids.to(on), p_mask.to(on), c_ids.to(on), c_mask.to(on), temperature, prompt_index=index
            )
        out[rows, : logprobs.shape[1]] = logprobs.float().cpu()
    return out


@dataclass
class ShapedBatch:
    """What the loss needs besides the rollout itself."""

    loss_mask: torch.Tensor  # [B, T] completion mask, minus overlong-filtered rows
    advantages: torch.Tensor  # [B, 1] outcome / online RFT, or [B, T] process supervision
    old_logprobs: torch.Tensor | None  # [B, T], None when mu = 1 and the KL is not in the reward
    ref_logprobs: torch.Tensor | None  # [B, T], None when beta = 0
    stats: dict


def call_seed(base: int, first_prompt: int) -> int:
    """The seed of one engine call: the step's seed, moved by the global index of the call's first prompt
    (a call starting at prompt 0 keeps the step's seed, so one process with one call is unchanged)."""
    return (base + first_prompt * 1_000_000_007) % 2**63


def sample_rollout(engine, tokenizer, task, stream, rewards, config: Config, step: int, share=None, timer=None):
    """Generate and score N groups (more rounds with dynamic sampling); returns (batch, stats).

    `share(examples) -> (this process's examples, global index of its first)` splits the N prompts between
    processes (grpolab/distributed.py); alone, a process keeps them all."""
    rollout, grpo = config.rollout, config.grpo
    rounds = iter(range(grpo.dynamic_sampling_max_rounds))
    share = share or (lambda examples: (examples, 0))

    def generate(examples, first=0):
        base = (config.seed * 1_000_003 + step) * 31 + next(rounds)
        size = rollout.generation_batch or len(examples)
        parts = []
        for start in range(0, len(examples), size):
            params = SamplingParams(
                max_new_tokens=rollout.max_new_tokens,
                temperature=rollout.temperature,
                top_p=rollout.top_p,
                top_k=rollout.top_k,
                stop_strings=list(task.stop_strings),
                seed=call_seed(base, first + start),
            )
            chunk = examples[start : start + size]
            parts.append(collect_rollout(engine, tokenizer, task, chunk, rollout.group_size, params, rewards, timer))
        return concat_rollouts(parts, tokenizer.pad_token_id)

    draw = lambda n: [next(stream) for _ in range(n)]
    if grpo.dynamic_sampling:
        return dynamic_sampling(
            generate, draw, rollout.prompts_per_step, grpo.dynamic_sampling_max_rounds, tokenizer.pad_token_id
        )
    batch = generate(*share(draw(rollout.prompts_per_step)))
    zero = zero_variance_groups(batch.rewards).float().mean().item()
    return batch, {"groups_dropped": 0, "sampling_rounds": 1, "zero_std_groups_frac": zero}


def shape_batch(
    policy, reference, batch, task, tokenizer, config: Config, bf16: bool, on, timer, batch_wide=None
) -> ShapedBatch:
    """Loss mask, old and reference log-probs, and advantages for one rollout batch. `batch_wide(f, *rows)` applies
    f to the rows of the whole batch when it is split between processes (grpolab/distributed.py)."""
    batch_wide = batch_wide or (lambda function, *tensors: function(*tensors))
    grpo, size, temperature = config.grpo, config.train.scoring_batch_size, config.rollout.temperature
    share = (config.train.share_prompts, config.train.micro_batch_tokens)
    old_logprobs = ref_logprobs = None
    if grpo.mu > 1 or grpo.kl_in_reward:  # fixed for the mu passes; with mu = 1 the pass uses its own
        with timer("old_logprobs"):
            old_logprobs = batch_logprobs(policy, batch, size, temperature, bf16, on, *share)
    if reference is not None:
        with timer("reference"), reference.model() as model:
            ref_logprobs = batch_logprobs(model, batch, size, temperature, bf16, on, *share)
    rewards, stats = batch.rewards, {}
    if grpo.kl_in_reward:
        kl = KL_ESTIMATORS[grpo.kl_estimator](old_logprobs, ref_logprobs)  # [B, T]
        rewards, sequence_kl = kl_penalised_rewards(rewards, kl, batch.completion_mask, grpo.beta)
        stats["kl_in_reward"] = sequence_kl.mean().item()
    if grpo.algorithm == "online_rft":  # DeepSeekMath section 5: coefficient 1 on correct samples
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
