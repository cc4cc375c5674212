"""PPO's pieces beside GRPO (ALGORITHMS.md section 7), as InstructGPT and DeepSeekMath ran it: per-token
rewards (the outcome reward on the last token minus beta * k1 on every token), generalised advantage
estimation against a learned value function, batch whitening of the advantages, and the clipped value loss.
The policy loss is GRPO's clipped surrogate with these per-token advantages (`objective.grpo_loss`).

Tensors are [B, T] over completion tokens; `mask` marks each row's tokens, a prefix of its columns. The value
V_t is the value of the state before token t (the prefix q, o_<t), read where the policy predicts o_t.
"""

from __future__ import annotations

import torch


def token_rewards(outcome: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every token, plus the outcome reward [B] on each row's last token. Returns [B, T]."""
    mask = mask.float()
    rewards = torch.zeros_like(mask) if kl is None else -beta * kl.float() * mask
    lengths = mask.sum(1).long()  # [B]
    rows = torch.nonzero(lengths > 0).squeeze(1)
    rewards[rows, lengths[rows] - 1] += outcome.float().reshape(-1)[rows]
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0),
    A_t = sum_l (gamma lambda)^l delta_{t+l} within the row. Returns (advantages, returns = A + V), both [B, T]
    and 0 outside `mask`."""
    mask = mask.float()
    values = values.float() * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])  # A_{t+1}
    next_value = torch.zeros_like(values[:, 0])  # V_{t+1}
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def masked_moments(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) variance of `values` over `mask`."""
    mask = mask.float()
    count = mask.sum().clamp(min=1.0)
    mean = (values * mask).sum() / count
    variance = (((values - mean) * mask) ** 2).sum() / count
    return mean, variance


def whiten(values: torch.Tensor, mask: torch.Tensor, moments=None, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked tokens of the batch (PPO's advantage whitening); 0 outside `mask`.
    `moments` (mean, variance) are those of the whole batch when it is split over processes; by default this
    batch's. (choice) The population variance, not Bessel's: the batches here have thousands of tokens."""
    mean, variance = moments if moments is not None else masked_moments(values, mask)
    return (values - mean) * torch.rsqrt(torch.as_tensor(variance + eps)) * mask.float()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 0.5 * max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2), 0 outside `mask`, and
    where the clipped term is the larger (the clipping acted). Returns ([B, T] losses, [B, T] bool)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    plain_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    mask = mask.float()
    return 0.5 * torch.maximum(plain_error, clipped_error) * mask, (clipped_error > plain_error) & mask.bool()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 is a perfect value function, 0 no better than a constant."""
    _, residual = masked_moments(returns - values, mask)
    _, total = masked_moments(returns, mask)
    return float(1.0 - residual / total) if total > 0 else float("nan")


__all__ = ["clipped_value_loss", "explained_variance", "gae", "masked_moments", "token_rewards", "whiten"]
