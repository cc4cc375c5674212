"""Log-probabilities of chosen tokens under a causal LM, without materialising a full-vocabulary
log-softmax for the whole batch at once.

Only the completion tokens (the mask's 1s) go through the output head, in chunks of
`LOGIT_CHUNK_TOKENS` tokens; `SelectedLogprobs` keeps no [tokens, vocabulary] tensor for the backward
pass: it saves the hidden states and each token's log-sum-exp and recomputes a chunk's logits when the
gradient is needed (one extra head matmul, instead of ~3 fp32 vocabulary-wide tensors per token held
from forward to backward: 600 KB a token for a 49k vocabulary).

Batches are laid out as [left-padded prompt | right-padded completion]; position ids follow the
attention mask so that left padding does not shift positions (the engine uses the same rule).
"""

from __future__ import annotations

import torch

from grpolab.model.hf_compat import cache_argument, decoder_of, output_cache

LOGIT_CHUNK_ROWS = 8
LOGIT_CHUNK_TOKENS = 512  # tokens per head matmul: [512, V] bf16 logits or their gradients, 50 MB at V = 49k
CACHE_CHUNK_TOKENS = 64  # tokens per fp32 pass over [n, V] (12.6 MB at V = 49k): the passes stay in cache
# (measured) the head's products run on LOGIT_CHUNK_TOKENS rows, and only the fp32 passes on CACHE_CHUNK_TOKENS
# slices of their result: on an AVX2-only CPU in fp32 a [64, 576] x [576, 49k] product ran at 49 GFLOP/s against
# 104 at 512 rows (`benchmarks/head_chunks.py`)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count only real tokens: [0, 0, 0, 1, 2] for a mask [0, 0, 1, 1, 1]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    prompt_index: torch.Tensor | None = None,
):
    """log pi(o_t | q, o_<t) for every completion token: returns (logprobs [B, T], entropy [B, T] or None).
    Positions outside `completion_mask` get 0. The entropy is detached unless `entropy_grad` (an entropy
    bonus in the loss), which takes the plain path that keeps the log-softmax for backward.

    With `prompt_index` [B], the prompts are the N distinct ones ([N, P]) and row b continues prompt
    `prompt_index[b]`: each prompt goes through the model once and its keys / values are shared by its
    completions (`shared_prefix_hidden`); without it, row b's prompt is row b of `prompt_ids`.

    (choice) Logits are divided by the sampling temperature, as verl and TRL do, so that on-policy the
    trainer's log-probs equal the rollout's and the ratio is exactly 1.
    """
    if prompt_index is not None:
        hidden = shared_prefix_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index)
    else:
        hidden = full_sequence_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    return head_logprobs(model, hidden, completion_ids, completion_mask, temperature, with_entropy, entropy_grad)


def full_sequence_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """The decoder states that predict each completion token, [B, T, H], from one pass over prompt + completion."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    hidden = decoder_of(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state  # [B, P+T, H]
    prompt_len, length = prompt_ids.shape[1], completion_ids.shape[1]
    return hidden[:, prompt_len - 1 : prompt_len - 1 + length]  # [B, T, H]: states that predict o_t


def shared_prefix_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index):
    """Like `full_sequence_hidden`, but each of the N distinct prompts [N, P] runs through the decoder once:
    its per-layer keys / values are gathered to the B rows that continue it (`prompt_index` [B]) and the
    completions attend to them. The gather is differentiable, so the gradients of all G completions of a
    prompt flow back into one prompt pass. With G completions per prompt the prompt tokens cost 1/G of the
    unshared pass, in the forward and in the backward."""
    decoder = decoder_of(model)
    out = decoder(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        use_cache=True,
    )
    first = out.last_hidden_state[prompt_index, -1:]  # [B, 1, H]: the last prompt state predicts o_0
    if completion_ids.shape[1] == 1:
        return first
    cache = output_cache(out)
    cache.batch_select_indices(prompt_index)  # [N, heads, P, d] -> [B, heads, P, d] in every layer
    inputs = completion_ids[:, :-1]  # o_0..o_{T-2} predict o_1..o_{T-1}
    attention_mask = torch.cat([prompt_mask[prompt_index], completion_mask[:, :-1]], dim=1)  # [B, P+T-1]
    positions = prompt_mask.sum(1)[prompt_index, None] + torch.arange(inputs.shape[1], device=inputs.device)
    rest = decoder(
        input_ids=inputs,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **cache_argument(decoder, cache),
    ).last_hidden_state  # [B, T-1, H]
    return torch.cat([first, rest], dim=1)  # [B, T, H]


def head_logprobs(model, hidden, completion_ids, completion_mask, temperature, with_entropy, entropy_grad):
    """The output head on the states `hidden` [B, T, H]: log-probs (and entropies) of `completion_ids`."""
    head = model.get_output_embeddings()
    if not entropy_grad and type(head) is torch.nn.Linear and head.bias is None:
        selected = completion_mask.bool()  # [B, T]: padding never reaches the head
        compute_dtype = (
            torch.get_autocast_dtype(hidden.device.type)
            if torch.is_autocast_enabled(hidden.device.type)
            else hidden.dtype
        )
        token_logprobs, token_entropy = SelectedLogprobs.apply(
            hidden[selected], head.weight, completion_ids[selected], temperature, compute_dtype, with_entropy
        )
        logprobs = hidden.new_zeros(selected.shape, dtype=torch.float32).masked_scatter(selected, token_logprobs)
        entropy = None
        if with_entropy:
            entropy = torch.zeros(selected.shape, dtype=torch.float32, device=hidden.device)
            entropy[selected] = token_entropy
        return logprobs, entropy
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS):
        logits = head(hidden[start : start + LOGIT_CHUNK_ROWS]).float() / temperature  # [b, T, V]
        log_softmax = torch.log_softmax(logits, dim=-1)
        chosen = completion_ids[start : start + LOGIT_CHUNK_ROWS].unsqueeze(-1)
        logprob_chunks.append(log_softmax.gather(-1, chosen).squeeze(-1))  # [b, T]
        if with_entropy:
            entropy_chunks.append(-(log_softmax.exp() * log_softmax).sum(-1))  # [b, T]
    logprobs = torch.cat(logprob_chunks)
    entropy = torch.cat(entropy_chunks) if with_entropy else None
    return logprobs, entropy


class SelectedLogprobs(torch.autograd.Function):
    """log softmax(h W^T / temperature)[y] for rows h [N, H] and targets y [N], chunked over rows.
    Returns (logprobs [N] fp32, entropy [N] fp32 detached, or an empty tensor). The matmuls run in
    `compute_dtype` (bf16 under autocast), the softmax in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, compute_dtype, with_entropy):
        device = hidden.device.type
        logprobs = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs) if with_entropy else logprobs.new_empty(0)
        w = weight.to(compute_dtype)
        with torch.autocast(device, enabled=False):
            for block in chunks(hidden.shape[0], LOGIT_CHUNK_TOKENS):
                block_logits = scaled_logits(hidden[block], w, temperature, compute_dtype)  # [n, V]
                for part in chunks(block_logits.shape[0], CACHE_CHUNK_TOKENS):
                    logits = block_logits[part].float()  # [m, V] fp32
                    rows = slice(block.start + part.start, block.start + part.start + logits.shape[0])
                    lse[rows] = torch.logsumexp(logits, dim=-1)
                    logprobs[rows] = logits.gather(-1, targets[rows, None])[:, 0] - lse[rows]
                    if with_entropy:  # H = lse - sum_v p_v z_v, p = exp(z - lse)
                        probs = (logits - lse[rows, None]).exp_()
                        entropy[rows] = lse[rows] - torch.linalg.vecdot(probs, logits)
        # the compute-dtype copy of the weight is kept for backward (one cast per pass, not two)
        ctx.save_for_backward(hidden, w, targets, lse)
        ctx.temperature, ctx.compute_dtype, ctx.weight_dtype = temperature, compute_dtype, weight.dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, w, targets, lse = ctx.saved_tensors
        dtype, temperature = ctx.compute_dtype, ctx.temperature
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None  # [V, H] float32, started by the first chunk (no zero-filled buffer)
        with torch.autocast(hidden.device.type, enabled=False):
            for rows in chunks(hidden.shape[0], LOGIT_CHUNK_TOKENS):
                h = (hidden[rows] / temperature).to(dtype)  # z = (h / temperature) W^T
                grad_z = torch.mm(h, w.T)  # [n, V] logits in the compute dtype, turned into their gradients
                for part in chunks(h.shape[0], CACHE_CHUNK_TOKENS):  # fp32 work on cache-sized pieces
                    logits = grad_z[part].float()  # in fp32 a view: the passes below write grad_z in place
                    # d logp_y / d z = onehot(y) - softmax(z); z depends on h / temperature, so the chain
                    # factor 1 / temperature goes on the gradients of h and W below, not on [n, V]
                    g = grad_logprobs[rows][part, None]
                    grad = logits.sub_(lse[rows][part, None]).exp_().mul_(-g)
                    grad.scatter_add_(-1, targets[rows][part, None], g)
                    if grad.dtype != grad_z.dtype:
                        grad_z[part] = grad
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad_z @ w).div_(temperature).to(hidden.dtype)
                if ctx.needs_input_grad[1]:
                    chunk_grad = grad_z.T @ h
                    grad_weight = chunk_grad.float() if grad_weight is None else grad_weight.add_(chunk_grad)
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunks(total: int, size: int):
    return [slice(start, start + size) for start in range(0, total, size)]


def scaled_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float, dtype) -> torch.Tensor:
    """(hidden / temperature) W^T in `dtype`, [n, V]: the temperature scales the n x H states, not the n x V
    logits (one pass over [n, V] fewer; the same value up to rounding)."""
    return torch.mm((hidden / temperature).to(dtype), weight.T)


class CompletionScorer(torch.nn.Module):
    """`completion_logprobs` as a module's forward. DDP and FSDP2 act in a wrapped module's forward (gradient
    hooks, gathering sharded weights), and `completion_logprobs` reaches into the decoder and the output head
    directly, so the trainer wraps this module, never the bare causal LM."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(
        self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0, with_entropy=False,
        entropy_grad=False, prompt_index=None,
    ):  # fmt: skip
        return completion_logprobs(
            self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, with_entropy,
            entropy_grad, prompt_index,
        )  # fmt: skip


def as_scorer(model):
    """A model to call for log-probs: a CompletionScorer (or a DDP / FSDP wrapper of one), or a bare causal LM."""
    if isinstance(model, CompletionScorer) or isinstance(getattr(model, "module", None), CompletionScorer):
        return model
    return CompletionScorer(model)
