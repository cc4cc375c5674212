"""Reward and batch shaping terms of DAPO and PPO (ALGORITHMS.md sections 3 and 7). Pure functions.
DAPO's soft overlong punishment R_len is `grpolab.rewards.length.soft_overlong_punishment`.

- `zero_variance_groups`: which groups carry no signal (dynamic sampling drops them).
- `overlong_loss_mask`: DAPO's overlong filtering, truncated completions leave the loss.
- `kl_penalised_rewards`: the KL in the reward, PPO style, instead of in the loss.
"""

from __future__ import annotations

import torch


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[N] bool: True where all G rewards of a group are equal (every advantage is 0: no policy gradient)."""
    return rewards.max(dim=1).values == rewards.min(dim=1).values


def overlong_loss_mask(completion_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering (DAPO section 3.4): rows cut at the length limit get mask 0. [B, T] from [B, T], [B]."""
    return completion_mask * (~truncated).to(completion_mask.dtype).unsqueeze(1)


def kl_penalised_rewards(
    rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-style KL in the reward: r_i - beta * sum_t KL_{i,t}. Returns (rewards [N, G], sequence KL [N, G]).

    (choice) The per-token KL is summed over the completion, the sequence-level KL(pi_old || pi_ref) that
    PPO's per-token penalties add up to. PPO puts beta * k1 on every token and lets GAE spread it; GRPO's
    outcome advantages see one scalar per completion, and the sum is that scalar. `kl` is measured with the
    rollout policy's log-probs and carries no gradient: the penalty shapes the advantage only.
    """
    sequence_kl = (kl.detach() * mask).sum(dim=1).view_as(rewards)  # [N, G]
    return rewards - beta * sequence_kl, sequence_kl
