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

LOGIT_CHUNK_ROWS = 8
LOGIT_CHUNK_TOKENS = 512  # [512, V] fp32 logits: 100 MB for a 49k vocabulary


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
):
    """log pi(o_t | q, o_<t) for every completion token: returns (logprobs [B, T], entropy [B, T] or None).
    Positions outside `completion_mask` get 0. The entropy is detached unless `entropy_grad` (an entropy
    bonus in the loss), which takes the plain path that keeps the log-softmax for backward.

    (choice) Logits are divided by the sampling temperature, as verl and TRL do, so that on-policy the
    trainer's log-probs equal the rollout's and the ratio is exactly 1.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    decoder = model.get_decoder()
    hidden = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state  # [B, P+T, H]
    prompt_len, length = prompt_ids.shape[1], completion_ids.shape[1]
    hidden = hidden[:, prompt_len - 1 : prompt_len - 1 + length]  # [B, T, H]: states that predict o_t
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
            for start in range(0, hidden.shape[0], LOGIT_CHUNK_TOKENS):
                rows = slice(start, start + LOGIT_CHUNK_TOKENS)
                logits = (hidden[rows].to(compute_dtype) @ w.T).float() / temperature  # [n, V]
                lse[rows] = torch.logsumexp(logits, dim=-1)
                logprobs[rows] = logits.gather(-1, targets[rows, None])[:, 0] - lse[rows]
                if with_entropy:  # H = lse - sum_v p_v z_v
                    entropy[rows] = lse[rows] - (torch.softmax(logits, -1) * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.compute_dtype = temperature, compute_dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        dtype, temperature = ctx.compute_dtype, ctx.temperature
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], LOGIT_CHUNK_TOKENS):
                rows = slice(start, start + LOGIT_CHUNK_TOKENS)
                h = hidden[rows].to(dtype)
                logits = (h @ w.T).float() / temperature
                # d logp_y / d z = onehot(y) - softmax(z), times the chain factor 1 / temperature
                grad_logits = torch.exp(logits - lse[rows, None]).mul_(-grad_logprobs[rows, None])
                grad_logits.scatter_add_(-1, targets[rows, None], grad_logprobs[rows, None])
                grad_logits = (grad_logits / temperature).to(dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_logits.T @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


class CompletionScorer(torch.nn.Module):
    """`completion_logprobs` as a module's forward. DDP and FSDP2 act in a wrapped module's forward (gradient
    hooks, gathering sharded weights), and `completion_logprobs` reaches into the decoder and the output head
    directly, so the trainer wraps this module, never the bare causal LM."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(
        self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0, with_entropy=False,
        entropy_grad=False,
    ):  # fmt: skip
        return completion_logprobs(
            self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, with_entropy,
            entropy_grad,
        )  # fmt: skip


def as_scorer(model):
    """A model to call for log-probs: a CompletionScorer (or a DDP / FSDP wrapper of one), or a bare causal LM."""
    if isinstance(model, CompletionScorer) or isinstance(getattr(model, "module", None), CompletionScorer):
        return model
    return CompletionScorer(model)
