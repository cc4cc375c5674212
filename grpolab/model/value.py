"""PPO's value model: a causal LM's decoder with a scalar head (ALGORITHMS.md section 7), read at the states
that predict each completion token, so V_t is the value of the prefix (q, o_<t) before token t.

By default the decoder is a copy of the policy's (the value model "of comparable size to the policy" that GRPO
drops); `ppo.value_model=PATH` starts it from another model's decoder instead. The output head of that model
is not kept: the value model holds the decoder and one [H, 1] head. (choice) The head starts at zero, so the
first values are 0 and the first advantages are the discounted rewards to go.
"""

from __future__ import annotations

import copy

import torch

from grpolab.model.hf_compat import decoder_of
from grpolab.model.scoring import full_sequence_hidden, shared_prefix_hidden


class ValueModel(torch.nn.Module):
    def __init__(self, causal_lm):
        super().__init__()
        self.decoder = decoder_of(copy.deepcopy(causal_lm))
        embedding = self.decoder.get_input_embeddings()
        if isinstance(embedding, torch.nn.Embedding):
            embedding.sparse = False  # no tied head here to keep its gradient dense (grpolab/model/loading.py)
        self.head = torch.nn.Linear(causal_lm.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.config = causal_lm.config

    def get_decoder(self):  # what `decoder_of` asks for (grpolab/model/hf_compat.py)
        return self.decoder

    def forward(
        self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0, with_entropy=False,
        entropy_grad=False, prompt_index=None,
    ):  # fmt: skip
        """(V_t for every completion token [B, T] fp32, 0 outside `completion_mask`; None). The call of
        `CompletionScorer` (the sampling knobs unused), so one micro-batch helper drives the policy and the value
        model (`training.micro_batches.score`). With `prompt_index` the N distinct prompts run once and their
        keys / values are shared by their completions, as for log-probs."""
        if prompt_index is not None:
            hidden = shared_prefix_hidden(self, prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index)
        else:
            hidden = full_sequence_hidden(self, prompt_ids, prompt_mask, completion_ids, completion_mask)
        return self.head(hidden).squeeze(-1).float() * completion_mask, None


__all__ = ["ValueModel"]
