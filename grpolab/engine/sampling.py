"""Sampling maths for the grpolab engine: temperature, top-k, top-p as transformers defines them, and
the log-probability of the drawn token under the distribution it was drawn from.

transformers applies its warpers in the order temperature -> top-k -> top-p (`_get_logits_processor`);
top-k keeps every token whose logit ties with the k-th largest (`scores < kth` is removed), and top-p
removes the tokens, sorted ascending, whose cumulative probability is <= 1 - top_p, always keeping the
most likely one. These functions reproduce that exactly, so the `grpolab` and `hf` backends sample
from the same distribution and report the same log-probs.
"""

from __future__ import annotations

import torch


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Processed scores [R, V] (float32): logits / T, then top-k, then top-p; removed tokens are -inf."""
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)  # [R, V]
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False  # keep at least the most likely token
        remove = remove_sorted.scatter(1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row: (tokens [R], log-probs [R] under the sampling distribution).

    Temperature 0 is greedy: argmax of the raw logits (first index on ties, as `generate`), and the
    log-prob is that of the unwarped softmax, which is what the `hf` backend reports for greedy.
    """
    if temperature == 0:
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
        tokens = logits.argmax(dim=-1)  # [R]
    else:
        log_probs = torch.log_softmax(warp_logits(logits, temperature, top_k, top_p), dim=-1)  # [R, V]
        tokens = inverse_cdf_sample(log_probs.exp(), generator)  # [R]
    return tokens, log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of `probs` [R, V]: the first token whose cumulative probability exceeds u*total.

    (choice) Not torch.multinomial: on CPU it measured ~20x slower for [32, 49152] (77 ms vs 4 ms).
    Tokens of probability zero are never drawn (their cumulative sum equals the previous one's).
    """
    cumulative = probs.cumsum(dim=-1)  # [R, V]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cumulative[:, -1:]  # [R, 1]
    tokens = torch.searchsorted(cumulative, u, right=True).squeeze(-1)  # [R]
    overflow = tokens >= probs.shape[-1]  # float rounding can put u at the very end
    if overflow.any():
        tokens = torch.where(overflow, probs.argmax(dim=-1), tokens)
    return tokens
