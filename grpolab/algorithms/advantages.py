"""Advantage estimators (ALGORITHMS.md section 1). Pure functions over reward tensors; no model code.

Rewards arrive as a [N, G] tensor: N prompts, G completions each. Every estimator returns [N, G];
the trainer broadcasts a completion's advantage over its tokens (outcome supervision).
"""

from __future__ import annotations

import torch

STD_EPS = 1e-4  # DeepSeekMath / the common reference implementation add 1e-4 to the std


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = STD_EPS) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std + eps).

    scale = "group": std within the group (GRPO, DeepSeekMath eq. 3).
    scale = "batch": std over the whole rollout batch, mean still per group.
    scale = "none": no division, A_i = r_i - mean_group (Dr. GRPO, which argues the std biases towards
    too-easy and too-hard questions).
    The std is the sample std (N-1) -- (choice) as in the common reference implementation.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)  # [N, G]
    if scale == "none":
        return centered
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True, unbiased=True)  # [N, 1]
    elif scale == "batch":
        std = rewards.std(unbiased=True)  # scalar
    else:
        raise ValueError(f"unknown advantage scale {scale!r}")
    return centered / (std + eps)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean)."""
    group_size = rewards.shape[1]
    return (rewards - rewards.mean(dim=1, keepdim=True)) * group_size / (group_size - 1)


def compute_advantages(rewards: torch.Tensor, estimator: str) -> torch.Tensor:
    """Dispatch on `grpo.advantage`: group | batch | none | rloo."""
    if estimator == "rloo":
        return rloo_advantages(rewards)
    return group_advantages(rewards, scale=estimator)


def process_advantages(
    step_rewards: list[list[float]], step_ends: list[list[int]], length: int, eps: float = STD_EPS
) -> torch.Tensor:
    """Process supervision (DeepSeekMath 4.1.3) for one group.

    step_rewards[i][j] is the reward of step j of completion i, whose last token is step_ends[i][j].
    Rewards are normalised over every step reward of the group; the advantage of token t is the sum
    of the normalised rewards of the steps that end at or after t. Returns [G, length].
    """
    flat = torch.tensor([r for rewards in step_rewards for r in rewards], dtype=torch.float32)
    mean = flat.mean()
    std = flat.std(unbiased=True) if flat.numel() > 1 else torch.tensor(0.0)
    advantages = torch.zeros(len(step_rewards), length)  # [G, T]
    for i, (rewards, ends) in enumerate(zip(step_rewards, step_ends)):
        for reward, end in zip(rewards, ends):
            normalised = (reward - mean) / (std + eps)
            advantages[i, : end + 1] += normalised  # every t <= end(j) gets step j's reward
    return advantages
