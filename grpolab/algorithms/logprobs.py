"""Log-probabilities of chosen tokens under a causal LM, without materialising a full-vocabulary
log-softmax for the whole batch at once (it is computed in row chunks).

Batches are laid out as [left-padded prompt | right-padded completion]; position ids follow the
attention mask so that left padding does not shift positions (the engine uses the same rule).
"""

from __future__ import annotations

import torch

LOGIT_CHUNK_ROWS = 8


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
):
    """log pi(o_t | q, o_<t) for every completion token: returns (logprobs [B, T], entropy [B, T] or None).

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


class CompletionScorer(torch.nn.Module):
    """`completion_logprobs` as a module's forward. DDP and FSDP2 act in a wrapped module's forward (gradient
    hooks, gathering sharded weights), and `completion_logprobs` reaches into the decoder and the output head
    directly, so the trainer wraps this module, never the bare causal LM."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0, with_entropy=False):
        return completion_logprobs(
            self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, with_entropy
        )


def as_scorer(model):
    """A model to call for log-probs: a CompletionScorer (or a DDP / FSDP wrapper of one), or a bare causal LM."""
    if isinstance(model, CompletionScorer) or isinstance(getattr(model, "module", None), CompletionScorer):
        return model
    return CompletionScorer(model)
