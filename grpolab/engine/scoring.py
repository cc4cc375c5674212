"""Log-probs of given completions through the engine's packed decoder (`decoder.PackedDecoder`), no gradient:
the frozen reference on the fast path (`train.reference_forward`, grpolab/training/reference.py). The reference
never trains, so its forward needs neither autograd nor transformers' module machinery: the packed layers'
fused projections, run over whole sequences.

The layout and the rules are those of `grpolab.model.scoring.completion_logprobs`: [left-padded prompt |
right-padded completion], positions that follow the attention mask, logits divided by the sampling temperature.
With `prompt_index` each distinct prompt runs through the layers once and its keys / values serve every
completion that continues it (as the engine's prefill shares a prompt between its n samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grpolab.engine.decoder import PackedDecoder, rms_norm
from grpolab.model.scoring import CACHE_CHUNK_TOKENS, CompletionScorer, chunks, position_ids_from_mask


@torch.no_grad()
def packed_logprobs(
    decoder: PackedDecoder,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    prompt_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """log pi(o_t | q, o_<t) [B, T] float32 for every completion token (0 outside `completion_mask`). Without
    `prompt_index`, row b's prompt is row b of `prompt_ids`; with it, prompts are the N distinct ones [N, P]."""
    rows, length = completion_ids.shape
    if prompt_index is None:
        prompt_index = torch.arange(rows, device=prompt_ids.device)
    width = prompt_ids.shape[1]
    cos, sin = decoder.rope_tables(width + length)
    prompt_positions = position_ids_from_mask(prompt_mask)  # [N, P]
    prompt_rope = cos[prompt_positions].unsqueeze(1), sin[prompt_positions].unsqueeze(1)  # [N, 1, P, D]
    real = prompt_mask.bool()
    causal = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
    # padding queries see themselves so that no softmax row is empty (their outputs are never used)
    prompt_attend = (causal & real[:, None, None, :]) | torch.eye(width, dtype=torch.bool, device=real.device)
    # o_0..o_{T-2} are fed to predict o_1..o_{T-1}; the last prompt state predicts o_0
    inputs, fed = completion_ids[:, :-1], completion_mask[:, :-1].bool()
    steps = inputs.shape[1]
    positions = prompt_mask.sum(1)[prompt_index, None] + torch.arange(steps, device=inputs.device)  # [B, T-1]
    completion_rope = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    own = torch.ones(steps, steps, dtype=torch.bool, device=real.device).tril() & fed[:, None, :]  # [B, T-1, T-1]
    seen = real[prompt_index, None, :].expand(-1, steps, -1)  # [B, T-1, P]: every real prompt token
    completion_attend = torch.cat([seen, own], dim=-1).unsqueeze(1)  # [B, 1, T-1, P+T-1]
    prompt_hidden = F.embedding(prompt_ids, decoder.embed)  # [N, P, H]
    hidden = F.embedding(inputs, decoder.embed)  # [B, T-1, H]
    for layer in decoder.layers:
        normed = rms_norm(prompt_hidden, layer.input_norm, decoder.eps)
        q, k, v = decoder.project_qkv(layer, normed, *prompt_rope)  # [N, heads | kv_heads, P, D]
        if steps:
            normed = rms_norm(hidden, layer.input_norm, decoder.eps)
            q_new, k_new, v_new = decoder.project_qkv(layer, normed, *completion_rope)
            keys = torch.cat([k[prompt_index], k_new], dim=2)  # [B, kv_heads, P+T-1, D]
            values = torch.cat([v[prompt_index], v_new], dim=2)
            attention = F.scaled_dot_product_attention(
                q_new, keys, values, attn_mask=completion_attend, enable_gqa=True
            )  # fmt: skip
            hidden = decoder.finish_layer(layer, hidden, attention.transpose(1, 2).reshape(rows, steps, -1))
        attention = F.scaled_dot_product_attention(q, k, v, attn_mask=prompt_attend, enable_gqa=True)
        attention = attention.transpose(1, 2).reshape(prompt_ids.shape[0], width, -1)  # [N, P, heads * D]
        prompt_hidden = decoder.finish_layer(layer, prompt_hidden, attention)
    states = torch.cat([prompt_hidden[prompt_index, -1:], hidden], dim=1)  # [B, T, H]: states that predict o_t
    selected = completion_mask.bool()
    picked, targets = states[selected], completion_ids[selected]  # [n, H], [n]: padding never reaches the head
    logprobs = torch.zeros(rows, length, dtype=torch.float32, device=states.device)
    values = [
        (decoder.logits(picked[part]) / temperature).log_softmax(-1).gather(-1, targets[part, None])[:, 0]
        for part in chunks(picked.shape[0], CACHE_CHUNK_TOKENS)
    ]
    if values:
        logprobs[selected] = torch.cat(values)
    return logprobs


class PackedScorer(CompletionScorer):
    """`CompletionScorer`'s call through a `PackedDecoder` (no gradient, no entropy): what the frozen reference
    is scored with under `train.reference_forward=packed`. It holds only the packed copy, not the model."""

    def __init__(self, decoder: PackedDecoder, window: int | None = None):
        """`window`: the model's sliding attention window, beyond which the packed path does not attend."""
        super().__init__(torch.nn.Identity())
        self.decoder, self.window = decoder, window

    def forward(
        self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0, with_entropy=False,
        entropy_grad=False, prompt_index=None,
    ):  # fmt: skip
        if with_entropy or entropy_grad:
            raise ValueError("the packed scorer gives log-probs only (it scores the frozen reference)")
        if self.window is not None and prompt_ids.shape[1] + completion_ids.shape[1] > self.window:
            raise ValueError(
                f"train.reference_forward=packed: sequences of {prompt_ids.shape[1] + completion_ids.shape[1]} "
                f"tokens exceed the model's sliding window ({self.window}); use train.reference_forward=transformers"
            )
        with torch.autocast(prompt_ids.device.type, enabled=False):  # the packed weights have their own dtype
            logprobs = packed_logprobs(
                self.decoder, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, prompt_index
            )  # fmt: skip
        return logprobs, None
