"""Advantage estimators (ALGORITHMS.md section 1). Pure functions over reward tensors; no model code.

Outcome rewards arrive as a [N, G] tensor: N prompts, G completions each. Every outcome estimator returns
[N, G]; the trainer broadcasts a completion's advantage over its tokens. Process supervision returns
token advantages [B, T] directly.

`scored` ([N, G] bool, optional) marks completions that at least one reward function applied to. A completion
no reward applied to gets advantage 0 and (choice) is also left out of its group's mean and std, since
"does not apply" is not a reward of 0.
"""

from __future__ import annotations

import torch

STD_EPS = 1e-4  # DeepSeekMath / the common reference implementation add 1e-4 to the std


def _masked_group_stats(rewards: torch.Tensor, scored: torch.Tensor):
    """Per-group count, mean and centred rewards over scored members only."""
    weight = scored.to(rewards.dtype)  # [N, G]
    count = weight.sum(dim=1, keepdim=True)  # [N, 1]
    mean = (rewards * weight).sum(dim=1, keepdim=True) / count.clamp(min=1)  # [N, 1]
    return count, mean, (rewards - mean) * weight  # centred is 0 on unscored members


def group_advantages(
    rewards: torch.Tensor, scale: str = "group", eps: float = STD_EPS, scored: torch.Tensor | None = None
) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std + eps).

    scale = "group": std within the group (GRPO, DeepSeekMath eq. 3).
    scale = "batch": std over the whole rollout batch, mean still per group.
    scale = "none": no division, A_i = r_i - mean_group (Dr. GRPO, which argues the std biases towards
    too-easy and too-hard questions).
    The std is the sample std (N-1) -- (choice) as in the common reference implementation; a group (or
    batch) with fewer than two scored members has std 0.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"unknown advantage scale {scale!r}")
    scored = torch.ones_like(rewards, dtype=torch.bool) if scored is None else scored
    count, _, centered = _masked_group_stats(rewards, scored)  # [N, 1], [N, G]
    if scale == "none":
        return centered
    if scale == "group":
        std = (centered.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # [N, 1]
    else:
        values = rewards[scored]  # the batch's scored rewards, flat
        std = values.std(unbiased=True) if values.numel() > 1 else rewards.new_zeros(())
    return centered / (std + eps)


def rloo_advantages(rewards: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean).

    Over scored members only; a group with fewer than two scored members gets 0.
    """
    scored = torch.ones_like(rewards, dtype=torch.bool) if scored is None else scored
    count, _, centered = _masked_group_stats(rewards, scored)  # [N, 1], [N, G]
    factor = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))  # [N, 1]
    return centered * factor


def compute_advantages(rewards: torch.Tensor, estimator: str, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on `grpo.advantage` for outcome rewards: group | batch | none | rloo."""
    if estimator == "rloo":
        return rloo_advantages(rewards, scored)
    return group_advantages(rewards, scale=estimator, scored=scored)


def rft_coefficients(correct: list[bool]) -> torch.Tensor:
    """Online RFT (DeepSeekMath section 5): gradient coefficient 1 on correct samples, 0 on the rest. [B]"""
    return torch.tensor([1.0 if c else 0.0 for c in correct])


def process_advantages(
    step_rewards: list[list[float]], step_ends: list[list[int]], length: int, eps: float = STD_EPS
) -> torch.Tensor:
    """Process supervision (DeepSeekMath 4.1.3) for one group.

    step_rewards[i][j] is the reward of step j of completion i, whose last token is step_ends[i][j].
    Rewards are normalised over every step reward of the group (sample std + eps, as for outcome rewards);
    the advantage of token t is the sum of the normalised rewards of the steps that end at or after t.
    Returns [G, length].
    """
    flat = torch.tensor([r for rewards in step_rewards for r in rewards], dtype=torch.float32)
    mean = flat.mean() if flat.numel() else torch.tensor(0.0)
    std = flat.std(unbiased=True) if flat.numel() > 1 else torch.tensor(0.0)
    advantages = torch.zeros(len(step_rewards), length)  # [G, T]
    for i, (rewards, ends) in enumerate(zip(step_rewards, step_ends)):
        for reward, end in zip(rewards, ends):
            normalised = (reward - mean) / (std + eps)
            advantages[i, : min(end, length - 1) + 1] += normalised  # every t <= index(j) gets step j's reward
    return advantages


def process_batch_advantages(
    step_rewards: list[list[float]], step_ends: list[list[int]], group_size: int, length: int
) -> torch.Tensor:
    """`process_advantages` for every group of a rollout batch (rows grouped G at a time). Returns [B, T]."""
    groups = [
        process_advantages(step_rewards[start : start + group_size], step_ends[start : start + group_size], length)
        for start in range(0, len(step_rewards), group_size)
    ]
    return torch.cat(groups)  # [B, T]


def token_index_of_char(token_char_ends: list[int], char_end: int) -> int:
    """The index of the token that holds character `char_end - 1`, i.e. the last token of a step that ends
    (exclusive) at `char_end`. `token_char_ends[k]` is the length of the text decoded from tokens 0..k.
    A step that ends beyond the text maps to the last token."""
    for index, end in enumerate(token_char_ends):
        if end >= char_end:
            return index
    return len(token_char_ends) - 1
