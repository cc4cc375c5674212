"""The fast decode path for Llama-family decoders (Llama, Qwen2, Mistral): packed weights and a
preallocated KV cache, driven without transformers' per-step machinery.

Why a custom path: on a 2-core CPU, transformers' forward spends a large share of each decode step
in Python (mask building, cache bookkeeping, repeat_kv copies of the grouped KV heads, per-module
hooks). Here each layer is a handful of tensor ops: one fused QKV matmul, one fused gate/up matmul,
and grouped-query attention computed without copying the KV heads (in decode, the G query heads that
share a KV head are laid out as G query rows of one batched matmul). The weights are packed copies in the engine's
dtype, refreshed by `load_weights` after each optimizer step (bf16 weights prepacked for oneDNN on
CPU). Decode attention is two batched matmuls over a cache with transposed keys. Rotary tables come
from the model's own rotary module, so every rope variant it implements without length dependence
is honoured.

Everything else (GPT-2 and any other causal LM) goes through `hf_runner.HFRunner`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grpolab.engine import int8
from grpolab.model.scoring import position_ids_from_mask

SUPPORTED_TYPES = {"llama", "qwen2", "mistral"}
STATIC_ROPE_TYPES = {"default", "linear", "llama3"}


def sliding_window(config) -> int | None:
    """The model's sliding attention window, or None where every token attends to the whole sequence."""
    window = getattr(config, "sliding_window", None)
    return window if window is not None and getattr(config, "use_sliding_window", True) else None


def supports(model, total_length: int) -> bool:
    """Can the packed path run this model for sequences of `total_length` tokens?"""
    if hasattr(model, "peft_config"):  # LoRA: the adapter's update lives outside the packed weights
        return False
    config = model.config
    if config.model_type not in SUPPORTED_TYPES or getattr(config, "hidden_act", "silu") != "silu":
        return False
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in STATIC_ROPE_TYPES:
        return False
    window = sliding_window(config)
    return window is None or total_length <= window


def onednn_prepacks(dtype: torch.dtype, device: torch.device) -> bool:
    """Prepack bf16 weights for oneDNN on CPU? `F.linear` reorders a plain bf16 weight into oneDNN's
    blocked layout on every call; a weight reordered once runs the 32-row decode GEMMs ~25% faster
    (measured, SmolLM2 shapes, 2 threads) with bit-identical results. fp32 stays on `F.linear`,
    whose MKL kernels are what transformers uses, so greedy decoding stays token-identical.
    Only where this CPU's oneDNN has a bf16 path (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX; not AVX2-only
    x86 nor ARM): asked of the hardware once, by reordering a small weight."""
    return dtype == torch.bfloat16 and device.type == "cpu" and onednn_bf16_reorder_works()


@functools.lru_cache(maxsize=1)
def onednn_bf16_reorder_works() -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), Linear.ROWS_HINT)
    except RuntimeError:  # "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"
        return False
    return True


class Linear:
    """y = x W^T + b with W in the engine dtype, optionally prepacked for oneDNN (see above)."""

    ROWS_HINT = 32  # the batch size oneDNN's weight layout is chosen for: GRPO's n x prompts

    def __init__(self, weight, bias, dtype: torch.dtype, storage: torch.Tensor | None = None):
        """`storage`: a plain tensor in `dtype` to hold the weight, shared with its owner (a tied head's
        embedding copy); ignored when the weight is prepacked."""
        self.dtype = dtype
        self.prepacked = onednn_prepacks(dtype, weight.device)
        self.weight = None if self.prepacked else storage
        self.load(weight, bias)

    def load(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """(Re)load from the model: a prepacked weight is reordered anew, a plain one copied in place."""
        self.bias = None if bias is None else bias.detach().to(self.dtype, copy=True)
        if self.prepacked:
            self.weight = None  # free the old layout before building the new one
            plain = weight.detach().to(self.dtype).contiguous()
            self.weight = torch.ops.mkldnn._reorder_linear_weight(plain, self.ROWS_HINT)
        elif self.weight is not None:
            self.weight.copy_(weight)
        else:
            self.weight = weight.detach().to(self.dtype, copy=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepacked:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class PackedLayer:
    input_norm: torch.Tensor  # [H]
    qkv: Linear  # [(heads + 2 kv_heads) * D, H]
    out: Linear  # [H, heads * D]
    post_norm: torch.Tensor  # [H]
    gate_up: Linear  # [2 I, H]
    down: Linear  # [H, I]


def cat_or_none(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in tensors) else torch.cat(tensors)


def layer_linears(layer) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The fused (weight, bias) of each packed projection of a decoder layer."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = [attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]
    return {
        "qkv": (torch.cat([m.weight for m in qkv]), cat_or_none([m.bias for m in qkv])),
        "out": (attn.o_proj.weight, attn.o_proj.bias),
        "gate_up": (torch.cat([m.weight for m in gate_up]), cat_or_none([m.bias for m in gate_up])),
        "down": (mlp.down_proj.weight, mlp.down_proj.bias),
    }


def make_linear(weight, bias, dtype: torch.dtype, maxima: dict | None, key, storage: torch.Tensor | None = None):
    """An int8 projection (`int8.py`, float32 in and out; `maxima`: the calibration's activation maxima, keyed
    by (layer, name)) or, with `maxima` None, one in the engine dtype."""
    if maxima is not None:  # built empty: `copy_weights` loads it, with the smoothing folded (`int8.load_layer`)
        return int8.Int8Linear(None, None, maxima.get(key), folded=key[1] != "out")
    return Linear(weight, bias, dtype, storage)


def pack_layer(layer, dtype: torch.dtype, index: int = 0, maxima: dict | None = None) -> PackedLayer:
    linears = {
        name: make_linear(weight, bias, dtype, maxima, (index, name))
        for name, (weight, bias) in layer_linears(layer).items()
    }
    return PackedLayer(
        input_norm=layer.input_layernorm.weight.detach().to(dtype, copy=True),
        post_norm=layer.post_attention_layernorm.weight.detach().to(dtype, copy=True),
        **linears,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As LlamaRMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, x [R, heads, L, D], cos/sin [R, 1, L, D] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class PackedDecoder:
    """Runs prefill and decode steps; owns the packed weights and the KV cache of the current call."""

    def __init__(self, model, dtype: torch.dtype, int8_maxima: dict | None = None):
        """`int8_maxima`: the projections and the head hold int8 weights (`int8.py`), smoothed by these activation
        maxima (`int8.activation_maxima`); `dtype` must then be float32, the dtype of their inputs and outputs, of
        the norms and of the KV cache."""
        config = model.config
        if int8_maxima is not None and dtype != torch.float32:
            raise ValueError("int8 weights take float32 activations")
        self.dtype, self.int8_maxima = dtype, int8_maxima
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        # (choice) the KV cache and attention scores are in the engine dtype: with bf16 weights a bf16 cache
        # halves the bytes each decode step reads (measured 8-17% faster per call than float32, 2 threads);
        # the softmax is computed in float32 and rotary embedding stays float32.
        self.rotary = model.model.rotary_emb
        self.load_weights(model)

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """(Re)pack the model's current weights in the engine dtype; a tied head shares the embedding copy
        unless its weight is prepacked. After the first call plain tensors are overwritten in place (no new
        allocation per step); prepacked ones are reordered anew."""
        if getattr(self, "layers", None):
            return self.copy_weights(model)
        self.layers = [pack_layer(layer, self.dtype, i, self.int8_maxima) for i, layer in enumerate(model.model.layers)]
        self.final_norm = model.model.norm.weight.detach().to(self.dtype, copy=True)
        self.embed = model.get_input_embeddings().weight.detach().to(self.dtype, copy=True)
        head = model.get_output_embeddings()
        tied = head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        storage = self.embed if tied else None
        bias = getattr(head, "bias", None)
        self.head = make_linear(head.weight, bias, self.dtype, self.int8_maxima, (-1, "head"), storage)
        if self.int8_maxima is not None:
            self.copy_weights(model)  # quantises the int8 projections once, the smoothing folded in

    def copy_weights(self, model) -> None:
        for packed, layer in zip(self.layers, model.model.layers):
            norms = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
            if self.int8_maxima is not None:
                int8.load_layer(packed, layer_linears(layer), *norms)
                continue
            for name, (weight, bias) in layer_linears(layer).items():
                getattr(packed, name).load(weight, bias)
            packed.input_norm.copy_(norms[0])
            packed.post_norm.copy_(norms[1])
        if getattr(self.head, "weight", None) is not self.embed:  # else the head's load refreshes the shared copy
            self.embed.copy_(model.get_input_embeddings().weight)
        head = model.get_output_embeddings()
        self.head.load(head.weight, getattr(head, "bias", None))
        folded = self.head.inverse_smoothing if self.int8_maxima is not None else 1.0
        self.final_norm.copy_(model.model.norm.weight * folded)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the last positions only: [R, H] -> [R, V] float32."""
        return self.head(rms_norm(hidden, self.final_norm, self.eps)).float()

    def rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(length, device=self.embed.device).unsqueeze(0)  # [1, L]
        cos, sin = self.rotary(self.embed[:1].float(), positions)  # [1, L, D] each, float32
        return cos[0], sin[0]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new_tokens: int) -> torch.Tensor:
        """Run the B left-padded prompts once, copy their KV n times into a cache of B*n rows with room
        for `max_new_tokens`, and return the next-token logits of each prompt [B, V]."""
        batch, width = ids.shape
        capacity = width + max_new_tokens
        self.cos, self.sin = self.rope_tables(capacity)
        positions = position_ids_from_mask(mask)  # [B, P]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [B, 1, P, D]
        real = mask.bool()
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        # Padding queries see themselves so that no softmax row is empty (their outputs are never used).
        attend = (causal & real[:, None, None, :]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        rows = batch * n
        # keys stored transposed [R, kv, D, L] so that q @ K^T reads them row-major
        key_shape = (rows, self.kv_heads, self.head_dim, capacity)
        value_shape = (rows, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.empty(key_shape, device=ids.device, dtype=self.dtype) for _ in self.layers]
        self.values = [torch.empty(value_shape, device=ids.device, dtype=self.dtype) for _ in self.layers]
        hidden = F.embedding(ids, self.embed)  # [B, P, H]
        for index, layer in enumerate(self.layers):
            normed = rms_norm(hidden, layer.input_norm, self.eps)
            q, k, v = self.project_qkv(layer, normed, cos, sin)  # [B, heads | kv_heads, P, D]
            self.keys[index][..., :width] = k.transpose(-1, -2).repeat_interleave(n, dim=0)
            self.values[index][:, :, :width] = v.repeat_interleave(n, dim=0)
            attention = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, enable_gqa=True)
            attention = attention.transpose(1, 2).reshape(batch, width, -1)  # [B, P, heads * D]
            hidden = self.finish_layer(layer, hidden, attention)
        self.length = width
        # additive mask of the cache, 0 or -inf, one row per (row, KV head) like the batched scores
        self.cache_bias = torch.zeros(rows, self.kv_heads, 1, capacity, device=ids.device, dtype=self.dtype)
        padding = ~real.repeat_interleave(n, dim=0)[:, None, None, :].expand(-1, self.kv_heads, 1, -1)
        self.cache_bias[..., :width].masked_fill_(padding, float("-inf"))
        self.next_position = mask.sum(1).repeat_interleave(n)  # [B*n]
        return self.logits(hidden[:, -1])

    def project_qkv(self, layer: PackedLayer, normed, cos, sin):
        """[R, L, H] -> rotated q [R, heads, L, D], rotated k and v [R, kv_heads, L, D]."""
        rows, length, _ = normed.shape
        qkv = layer.qkv(normed).float()  # rotary embedding runs in float32
        qkv = qkv.view(rows, length, -1, self.head_dim).transpose(1, 2)
        qk, v = qkv.split([self.heads + self.kv_heads, self.kv_heads], dim=1)
        q, k = rotate(qk, cos, sin).split([self.heads, self.kv_heads], dim=1)
        return q, k, v

    def finish_layer(self, layer: PackedLayer, hidden, attention):
        """Output projection, residual, MLP (SwiGLU), residual."""
        hidden = hidden + layer.out(attention.to(self.dtype))
        normed = rms_norm(hidden, layer.post_norm, self.eps)
        gate, up = layer.gate_up(normed).chunk(2, dim=-1)
        return hidden + layer.down(F.silu(gate) * up)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [R]; returns next-token logits [R, V]."""
        rows, slot = tokens.shape[0], self.length
        positions = self.next_position.unsqueeze(1)  # [R, 1]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [R, 1, 1, D]
        length, group = slot + 1, self.heads // self.kv_heads
        bias = self.cache_bias.view(rows * self.kv_heads, 1, -1)[..., :length]  # [R kv, 1, L]
        hidden = F.embedding(tokens.unsqueeze(1), self.embed)  # [R, 1, H]
        for index, layer in enumerate(self.layers):
            normed = rms_norm(hidden, layer.input_norm, self.eps)
            q, k, v = self.project_qkv(layer, normed, cos, sin)
            self.keys[index][..., slot] = k[:, :, 0]
            self.values[index][:, :, slot] = v[:, :, 0]
            # The G query heads of one KV head become G query rows: GQA without repeating K and V.
            q = q.reshape(rows * self.kv_heads, group, self.head_dim).to(self.dtype)
            keys = self.keys[index].view(rows * self.kv_heads, self.head_dim, -1)[..., :length]
            values = self.values[index].view(rows * self.kv_heads, -1, self.head_dim)[:, :length]
            # (choice) batched matmuls rather than SDPA: for one query position SDPA's CPU kernel
            # measured ~2.5x slower (359 vs 145 us a layer, 32 rows x 82 keys, 2 threads).
            scores = torch.baddbmm(bias, q, keys, alpha=self.scale)  # [R kv, G, L]
            attention = torch.bmm(scores.softmax(-1, dtype=torch.float32).to(self.dtype), values)  # [R kv, G, D]
            hidden = self.finish_layer(layer, hidden, attention.view(rows, 1, -1))
        self.length += 1
        self.next_position = self.next_position + 1
        return self.logits(hidden[:, 0])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the cache (compaction), keeping `rows` in this order."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.cache_bias = self.cache_bias[rows]
        self.next_position = self.next_position[rows]

    def release(self) -> None:
        self.keys = self.values = []
