"""Sampling one step's rollout: the step's prompts drawn from the task's stream, split into engine calls each
seeded by the global index of its first prompt (so many processes sample exactly what one does), and DAPO's
dynamic sampling (groups whose rewards are all equal are dropped and more prompts drawn). Also the batch
plumbing other layers gather with: selecting groups and concatenating batches."""

from __future__ import annotations

import torch

from grpolab.algorithms.shaping import zero_variance_groups
from grpolab.config import Config
from grpolab.engine import SamplingParams
from grpolab.rollout.batch import RolloutBatch, collect_rollout


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


def call_seed(base: int, first_prompt: int) -> int:
    """The seed of one engine call: the step's seed, moved by the global index of the call's first prompt
    (a call starting at prompt 0 keeps the step's seed, so one process with one call is unchanged)."""
    return (base + first_prompt * 1_000_000_007) % 2**63


def sample_rollout(engine, tokenizer, task, stream, rewards, config: Config, step: int, share=None, timer=None):
    """Generate and score N groups (more rounds with dynamic sampling); returns (batch, stats).

    `share(examples) -> (this process's examples, global index of its first)` splits the N prompts between
    processes (grpolab/parallel/distributed.py); alone, a process keeps them all."""
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
