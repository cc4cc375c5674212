"""The fast decode path for Llama-family decoders (Llama, Qwen2, Mistral): packed weights and a
preallocated KV cache, driven without transformers' per-step machinery.

Why a custom path: on a 2-core CPU, transformers' forward spends a large share of each decode step
in Python (mask building, cache bookkeeping, repeat_kv copies of the grouped KV heads, per-module
hooks). Here each layer is a handful of tensor ops: one fused QKV matmul, one fused gate/up matmul,
and grouped-query attention computed without copying the KV heads (the G query heads that share a KV
head are laid out as G query rows of one SDPA call). The weights are packed copies in the engine's
dtype, refreshed by `load_weights` after each optimizer step. Rotary embedding, the KV cache and
attention stay in float32 even with bf16 weights: on CPU the bf16 attention kernel measured about
3x slower than the float32 one, while the matmuls gain from bf16. Rotary tables come from the model's
own rotary module, so every rope variant it implements without length dependence is honoured.

Everything else (GPT-2 and any other causal LM) goes through `hf_runner.HFRunner`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grpolab.algorithms.logprobs import position_ids_from_mask

SUPPORTED_TYPES = {"llama", "qwen2", "mistral"}
STATIC_ROPE_TYPES = {"default", "linear", "llama3"}


def supports(model, total_length: int) -> bool:
    """Can the packed path run this model for sequences of `total_length` tokens?"""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES or getattr(config, "hidden_act", "silu") != "silu":
        return False
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in STATIC_ROPE_TYPES:
        return False
    window = getattr(config, "sliding_window", None)
    uses_window = window is not None and getattr(config, "use_sliding_window", True)
    return not (uses_window and total_length > window)


@dataclass
class PackedLayer:
    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * D, H]
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # [H, heads * D]
    out_bias: torch.Tensor | None
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 I, H]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # [H, I]
    down_bias: torch.Tensor | None


def cat_or_none(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in tensors) else torch.cat(tensors)


def pack_layer(layer, dtype: torch.dtype) -> PackedLayer:
    attn, mlp = layer.self_attn, layer.mlp
    bias = lambda module: None if module.bias is None else module.bias.detach().to(dtype, copy=True)
    return PackedLayer(
        input_norm=layer.input_layernorm.weight.detach().to(dtype, copy=True),
        qkv=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach().to(dtype),
        qkv_bias=cat_or_none([bias(attn.q_proj), bias(attn.k_proj), bias(attn.v_proj)]),
        out=attn.o_proj.weight.detach().to(dtype, copy=True),
        out_bias=bias(attn.o_proj),
        post_norm=layer.post_attention_layernorm.weight.detach().to(dtype, copy=True),
        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach().to(dtype),
        gate_up_bias=cat_or_none([bias(mlp.gate_proj), bias(mlp.up_proj)]),
        down=mlp.down_proj.weight.detach().to(dtype, copy=True),
        down_bias=bias(mlp.down_proj),
    )


def copy_rows(target: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """Write the row-concatenation of `parts` into `target` without building it."""
    offset = 0
    for part in parts:
        target[offset : offset + part.shape[0]].copy_(part)
        offset += part.shape[0]


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

    def __init__(self, model, dtype: torch.dtype):
        config = model.config
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.rotary = model.model.rotary_emb
        self.load_weights(model)

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """(Re)pack the model's current weights in the engine dtype; a tied head shares the embedding copy.
        After the first call the packed tensors are overwritten in place (no new allocation per step)."""
        if getattr(self, "layers", None):
            return self.copy_weights(model)
        self.layers = [pack_layer(layer, self.dtype) for layer in model.model.layers]
        self.final_norm = model.model.norm.weight.detach().to(self.dtype, copy=True)
        self.embed = model.get_input_embeddings().weight.detach().to(self.dtype, copy=True)
        head = model.get_output_embeddings()
        tied = head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        self.head = self.embed if tied else head.weight.detach().to(self.dtype, copy=True)
        bias = getattr(head, "bias", None)
        self.head_bias = None if bias is None else bias.detach().to(self.dtype, copy=True)

    def copy_weights(self, model) -> None:
        for packed, layer in zip(self.layers, model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            copy_rows(packed.qkv, [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            copy_rows(packed.gate_up, [mlp.gate_proj.weight, mlp.up_proj.weight])
            if packed.qkv_bias is not None:
                copy_rows(packed.qkv_bias, [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            if packed.gate_up_bias is not None:
                copy_rows(packed.gate_up_bias, [mlp.gate_proj.bias, mlp.up_proj.bias])
            for target, source in [
                (packed.input_norm, layer.input_layernorm.weight),
                (packed.post_norm, layer.post_attention_layernorm.weight),
                (packed.out, attn.o_proj.weight),
                (packed.out_bias, attn.o_proj.bias),
                (packed.down, mlp.down_proj.weight),
                (packed.down_bias, mlp.down_proj.bias),
            ]:
                if target is not None:
                    target.copy_(source)
        self.final_norm.copy_(model.model.norm.weight)
        self.embed.copy_(model.get_input_embeddings().weight)
        head = model.get_output_embeddings()
        if self.head is not self.embed:
            self.head.copy_(head.weight)
        if self.head_bias is not None:
            self.head_bias.copy_(head.bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the last positions only: [R, H] -> [R, V] float32."""
        return F.linear(rms_norm(hidden, self.final_norm, self.eps), self.head, self.head_bias).float()

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
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.empty(shape, device=ids.device) for _ in self.layers]  # float32 always
        self.values = [torch.empty(shape, device=ids.device) for _ in self.layers]
        hidden = F.embedding(ids, self.embed)  # [B, P, H]
        for index, layer in enumerate(self.layers):
            normed = rms_norm(hidden, layer.input_norm, self.eps)
            q, k, v = self.project_qkv(layer, normed, cos, sin)  # [B, heads | kv_heads, P, D]
            self.keys[index][:, :, :width] = k.repeat_interleave(n, dim=0)
            self.values[index][:, :, :width] = v.repeat_interleave(n, dim=0)
            attention = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, enable_gqa=True)
            attention = attention.transpose(1, 2).reshape(batch, width, -1)  # [B, P, heads * D]
            hidden = self.finish_layer(layer, hidden, attention)
        self.length = width
        self.cache_mask = torch.ones(rows, capacity, dtype=torch.bool, device=ids.device)
        self.cache_mask[:, :width] = real.repeat_interleave(n, dim=0)
        self.next_position = mask.sum(1).repeat_interleave(n)  # [B*n]
        return self.logits(hidden[:, -1])

    def project_qkv(self, layer: PackedLayer, normed, cos, sin):
        """[R, L, H] -> rotated q [R, heads, L, D], rotated k and v [R, kv_heads, L, D]."""
        rows, length, _ = normed.shape
        qkv = F.linear(normed, layer.qkv, layer.qkv_bias).float()  # attention runs in float32
        qkv = qkv.view(rows, length, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def finish_layer(self, layer: PackedLayer, hidden, attention):
        """Output projection, residual, MLP (SwiGLU), residual."""
        hidden = hidden + F.linear(attention.to(self.dtype), layer.out, layer.out_bias)
        normed = rms_norm(hidden, layer.post_norm, self.eps)
        gate, up = F.linear(normed, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
        return hidden + F.linear(F.silu(gate) * up, layer.down, layer.down_bias)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [R]; returns next-token logits [R, V]."""
        rows, slot = tokens.shape[0], self.length
        positions = self.next_position.unsqueeze(1)  # [R, 1]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [R, 1, 1, D]
        attend = self.cache_mask[:, None, None, : slot + 1]  # [R, 1, 1, L]
        group = self.heads // self.kv_heads
        hidden = F.embedding(tokens.unsqueeze(1), self.embed)  # [R, 1, H]
        for index, layer in enumerate(self.layers):
            normed = rms_norm(hidden, layer.input_norm, self.eps)
            q, k, v = self.project_qkv(layer, normed, cos, sin)
            self.keys[index][:, :, slot : slot + 1] = k
            self.values[index][:, :, slot : slot + 1] = v
            # The G query heads of one KV head become G query rows: GQA without repeating K and V.
            q = q.reshape(rows, self.kv_heads, group, self.head_dim)
            keys = self.keys[index][:, :, : slot + 1]
            values = self.values[index][:, :, : slot + 1]
            attention = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend)  # [R, kv, G, D]
            hidden = self.finish_layer(layer, hidden, attention.reshape(rows, 1, -1))
        self.length += 1
        self.next_position = self.next_position + 1
        return self.logits(hidden[:, 0])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the cache (compaction), keeping `rows` in this order."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.cache_mask = self.cache_mask[rows]
        self.next_position = self.next_position[rows]

    def release(self) -> None:
        self.keys = self.values = []
