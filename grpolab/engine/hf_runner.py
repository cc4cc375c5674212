"""The generic decode path: any transformers causal LM through its own forward and a `DynamicCache`.

Used for architectures the packed path (`decoder.py`) does not cover, e.g. GPT-2. It keeps the
engine's properties that do not depend on the architecture: one prefill per prompt whose cache is
repeated n times (`batch_repeat_interleave`), finished rows dropped from the cache
(`batch_select_indices`), the logits of the last position only, and the trainer's position rule.
"""

from __future__ import annotations

import torch

from grpolab.model.hf_compat import cache_argument
from grpolab.model.scoring import position_ids_from_mask


class HFRunner:
    def __init__(self, model):
        self.model = model

    def load_weights(self, model) -> None:
        """Copy `model`'s weights in when this runner holds its own (e.g. bf16) copy."""
        if model is not self.model:
            with torch.no_grad():
                for target, source in zip(self.model.parameters(), model.parameters()):
                    target.copy_(source)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new_tokens: int) -> torch.Tensor:
        from transformers import DynamicCache

        self.model.eval()
        self.cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            **cache_argument(self.model, self.cache),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache.batch_repeat_interleave(n)
        self.mask = mask.repeat_interleave(n, dim=0)  # [B*n, P]
        self.next_position = mask.sum(1).repeat_interleave(n)  # [B*n]
        return out.logits[:, -1].float()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=self.mask,
            position_ids=self.next_position.unsqueeze(1),
            **cache_argument(self.model, self.cache),
            use_cache=True,
            logits_to_keep=1,
        )
        self.next_position = self.next_position + 1
        return out.logits[:, -1].float()

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.next_position = self.next_position[rows]

    def release(self) -> None:
        self.cache = None
