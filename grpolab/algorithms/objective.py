"""The GRPO objective for one micro-batch, composed from the pure pieces in `losses.py`.

    L = aggregate( w * (clipped_surrogate(ratio, A) + beta * KL(pi_theta || pi_ref)) ) - c * mean token entropy

w is 1, or the truncated importance weight pi_old / pi_sampling of a rollout engine whose log-probs differ from
the trainer's (`grpo.rollout_correction`, `losses.rollout_weights`).

Each knob is a separate field of `GRPOConfig`: ratio level (token / GSPO sequence), eps_low / eps_high,
KL estimator and beta, aggregation, entropy coefficient. The KL is in the loss, as in GRPO
(DeepSeekMath eq. 3), unless `kl_in_reward` moves it into the reward (see `shaping.kl_penalised_rewards`);
the measured KL is still reported then.
The entropy bonus is a token mean over the whole rollout batch whatever the aggregation, as the spec
writes it (- c * mean token entropy), so that c means the same thing under every aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpolab.algorithms.losses import (
    KL_ESTIMATORS,
    aggregate,
    clipped_surrogate,
    masked_mean,
    rollout_weights,
    sequence_ratio,
    token_ratio,
)


@dataclass
class Normalisers:
    """Sizes of the WHOLE rollout batch, so micro-batch losses sum to the full-batch loss."""

    num_sequences: int  # rows with at least one token in the loss
    num_tokens: float  # tokens in the loss
    max_length: int  # L_max of `constant` aggregation: the generation budget (rollout.max_new_tokens)


def grpo_loss(
    logprobs: torch.Tensor,  # [B, T]
    old_logprobs: torch.Tensor,  # [B, T]
    ref_logprobs: torch.Tensor | None,  # [B, T] or None when beta = 0
    advantages: torch.Tensor,  # [B, 1] or [B, T]
    mask: torch.Tensor,  # [B, T]
    grpo,  # GRPOConfig
    normalisers: Normalisers,
    entropy: torch.Tensor | None = None,  # [B, T]
    sampling_logprobs: torch.Tensor | None = None,  # [B, T] the rollout engine's; None: no rollout correction
):
    """Returns (loss, stats); stats are detached micro-batch means for logging."""
    mask = mask.to(logprobs.dtype)
    if grpo.ratio_level == "sequence":
        ratio = sequence_ratio(logprobs, old_logprobs, mask)
    else:
        ratio = token_ratio(logprobs, old_logprobs)
    token_loss, clipped_low, clipped_high = clipped_surrogate(ratio, advantages, grpo.eps_low, grpo.eps_high)
    stats = {
        "clip_low_frac": masked_mean(clipped_low.float(), mask).item(),
        "clip_high_frac": masked_mean(clipped_high.float(), mask).item(),
    }
    if ref_logprobs is not None and grpo.beta > 0:
        kl = KL_ESTIMATORS[grpo.kl_estimator](logprobs, ref_logprobs)  # [B, T]
        if not grpo.kl_in_reward:
            token_loss = token_loss + grpo.beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask).item()
    if sampling_logprobs is not None and grpo.rollout_correction != "none":
        weights = rollout_weights(old_logprobs, sampling_logprobs, mask, grpo.rollout_correction, grpo.rollout_cap)
        token_loss = token_loss * weights  # the samples came from the engine: weight to pi_old (surrogate and KL)
        token_weights = weights.expand_as(mask)
        stats["rollout_weight_mean"] = masked_mean(token_weights, mask).item()
        stats["rollout_weight_capped_frac"] = masked_mean((token_weights >= grpo.rollout_cap).float(), mask).item()
        stats["rollout_weight_masked_frac"] = masked_mean((token_weights == 0).float(), mask).item()
    loss = aggregate(
        token_loss, mask, grpo.aggregation, normalisers.num_sequences, normalisers.num_tokens, normalisers.max_length
    )
    if entropy is not None:
        if grpo.entropy_coef:
            loss = loss - grpo.entropy_coef * (entropy * mask).sum() / max(normalisers.num_tokens, 1.0)
        stats["entropy"] = masked_mean(entropy.detach(), mask).item()
    return loss, stats
