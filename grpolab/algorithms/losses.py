"""Policy-loss pieces (ALGORITHMS.md section 2): ratios, clipped surrogate, KL estimators, aggregation.

Each function is pure and small so that the loss is a readable composition in the trainer:
    ratio -> clipped_surrogate -> + beta * kl -> - entropy bonus -> aggregate.
Shapes: B completions (a micro-batch of the rollout), T completion tokens; masks are 1 on tokens that count.
"""

from __future__ import annotations

import math

import torch


def token_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """rho_{i,t} = pi_theta / pi_old per token (PPO, GRPO)."""
    return torch.exp(logprobs - old_logprobs)  # [B, T]


def sequence_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO: s_i = exp(mean_t (logp - old)), applied to every token of o_i.

    Written as s_i.detach() * exp(logp - logp.detach()) so that the value is s_i on every token and the
    gradient is s_i * grad logp_t / |o_i| after sequence aggregation, as in GSPO eq. 7.
    """
    lengths = mask.sum(dim=1).clamp(min=1)  # [B]
    mean_log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1) / lengths  # [B]
    sequence = torch.exp(mean_log_ratio).detach().unsqueeze(1)  # [B, 1]
    return sequence * torch.exp(logprobs - logprobs.detach())  # [B, T]


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float):
    """L = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A), per token.

    `advantages` is [B, 1] (outcome supervision) or [B, T] (process supervision).
    Returns (loss [B, T], clipped_low [B, T] bool, clipped_high [B, T] bool); a token counts as clipped
    when the clipped branch is the active minimum (its gradient is zero).
    """
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    active = clipped < unclipped
    clipped_low = active & (ratio < 1.0 - eps_low)
    clipped_high = active & (ratio > 1.0 + eps_high)
    return loss, clipped_low, clipped_high


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi_theta - log pi_ref (unbiased, can be negative)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 (log pi_theta - log pi_ref)^2."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (DeepSeekMath eq. 4): >= 0 and 0 at equality."""
    log_ratio = ref_logprobs - logprobs
    # expm1(x) - x, not exp(x) - x - 1: for |x| ~ 1e-11 the latter rounds to -1e-16 (found by the >= 0 test)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def rollout_weights(
    old_logprobs: torch.Tensor, sampling_logprobs: torch.Tensor, mask: torch.Tensor, level: str, cap: float
) -> torch.Tensor:
    """Importance weights for a rollout sampled by another computation of pi_old (the engine's bf16 kernels,
    vLLM) or by an older policy (rollout workers, `rollout.max_staleness`) than the trainer's; the per-token
    loss is multiplied by them (detached).
    (choice: beyond ALGORITHMS.md, which assumes the samples come from pi_old exactly)
      token (TIS, Yao et al. 2025):  w_{i,t} = min(r_{i,t}, cap),  r_{i,t} = pi_old / pi_sampling          [B, T]
      sequence:                      w_i = min(R_i, cap),          R_i = prod_t r_{i,t} over o_i          [B, 1]
      token_mask (MIS):              w_{i,t} = r_{i,t} if 1/cap <= r_{i,t} <= cap, else 0 (token dropped)
      sequence_mask:                 w_i = R_i if 1/cap <= R_i <= cap, else 0 (the whole sequence dropped)
    """
    log_ratio = (old_logprobs - sampling_logprobs).detach() * mask  # [B, T]; 0 on padding
    if level.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=1, keepdim=True)  # [B, 1]
    elif not level.startswith("token"):
        raise ValueError(f"unknown rollout correction level {level!r}")
    ratio = torch.exp(log_ratio)
    if level.endswith("_mask"):
        limit = math.log(cap)
        return torch.where(log_ratio.abs() <= limit, ratio, torch.zeros_like(ratio))
    if level not in ("token", "sequence"):
        raise ValueError(f"unknown rollout correction level {level!r}")
    return ratio.clamp(max=cap)


def aggregate(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_sequences: int,
    num_tokens: float = 0.0,
    max_length: int = 0,
) -> torch.Tensor:
    """Reduce per-token losses of a micro-batch to its share of the full-batch loss.

    The normalisers (`num_sequences`, `num_tokens`, `max_length`) are those of the WHOLE rollout batch
    (all micro-batches, all ranks), so the sum of micro-batch results equals the full-batch loss and
    gradient accumulation is exact for every mode.
      sequence (GRPO):   (1/N) sum_i (1/|o_i|) sum_t L m
      token (DAPO):      sum_{i,t} L m / sum_{i,t} m
      constant (Dr. GRPO): sum_{i,t} L m / (N * L_max)
    """
    masked = token_loss * mask  # [B, T]
    if mode == "sequence":
        lengths = mask.sum(dim=1).clamp(min=1)  # [B]
        return (masked.sum(dim=1) / lengths).sum() / num_sequences
    if mode == "token":
        return masked.sum() / max(num_tokens, 1.0)
    if mode == "constant":
        return masked.sum() / (num_sequences * max(max_length, 1))
    raise ValueError(f"unknown aggregation {mode!r}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)
