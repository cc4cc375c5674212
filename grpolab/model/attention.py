"""Attention for the trainer's passes on CPU, registered with transformers as `grpolab_cpu`.

A GRPO micro-batch is many short rows (a prompt of tens of tokens, completions of tens to hundreds), and at those
sizes PyTorch's CPU SDPA kernel is slower than plain batched matmuls: on SmolLM2's shape (8 rows, 9 heads, 63
queries, 102 keys) forward + backward took 27 ms in bf16 against 13 ms for matmul + softmax in fp32 (1 thread).
So, on CPU and while the score tensor is small, attention is computed as
    softmax(q k^T * scale + mask) v
with the matmuls and the softmax in fp32 whatever the autocast dtype (the attention matmuls are a small share
of a step's FLOPs, and fp32 scores keep the rounding that rollout correction has to undo small). Grouped-query
heads are matched by reshaping the queries ([B, KV, groups * Q, D]), never by copying keys and values.
Beyond `MAX_SCORES` elements (long sequences, whose [B, H, Q, K] scores would be kept for backward), and on other
devices, it is transformers' SDPA path unchanged. The mask is SDPA's (boolean, True = attend, or None = causal).
"""

from __future__ import annotations

import torch

NAME = "grpolab_cpu"
MAX_SCORES = 1 << 24  # [B, H, Q, K] fp32 elements: 64 MB, e.g. 8 rows x 9 heads x 480 x 480 positions


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """query [B, H, Q, D], key / value [B, KV, K, D] -> ([B, Q, H, D], None), as transformers' attention functions."""
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    mask_ok = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1)
    small = batch * heads * queries * keys <= MAX_SCORES
    if query.device.type != "cpu" or dropout or not small or not mask_ok or kwargs.get("sliding_window"):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    q = query.float().reshape(batch, kv_heads, groups * queries, dim) * scale
    scores = torch.matmul(q, key.float().transpose(-1, -2)).view(batch, kv_heads, groups, queries, keys)
    if attention_mask is None and queries > 1:  # SDPA's mask skipped: causal, the queries are the last positions
        allowed = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril(keys - queries)
        attention_mask = allowed[None, None]
    if attention_mask is not None:
        mask = attention_mask[:, :, None]  # [B, 1, 1, Q, K] over [B, KV, groups, Q, K]
        # boolean: a row with no key allowed (padding) gets uniform weights, not NaN; float: an additive mask
        boolean = mask.dtype == torch.bool
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if boolean else scores + mask
    probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, groups * queries, keys)
    out = torch.matmul(probs, value.float()).to(value.dtype)  # [B, KV, groups * Q, D]
    return out.view(batch, heads, queries, dim).transpose(1, 2), None


def register() -> str:
    """Make `grpolab_cpu` known to transformers (attention and its mask, SDPA's); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def use_cpu_attention(model) -> None:
    """Switch an SDPA model to `grpolab_cpu` (other implementations, e.g. flash attention on GPUs, are kept)."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(register())
