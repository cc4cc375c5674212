"""What differs between the transformers releases grpolab supports (pyproject.toml's range), in one place.

The key/value cache: transformers 5.2x renamed `past_key_values` to `cache` (in the forward's arguments and
in its outputs) and removes the old name in 5.40; older releases know only `past_key_values`. grpolab passes
whichever name the model's own forward declares, so the same code runs on both sides of the rename without
deprecation warnings.
"""

from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=64)
def _cache_name(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_argument(module, cache) -> dict:
    """`{name: cache}` for `module(...)`, with the name its forward takes."""
    return {_cache_name(type(module).forward): cache}


def output_cache(output):
    """The cache a forward returned (`output.cache`, or `output.past_key_values` before the rename)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def decoder_of(model):
    """The decoder stack under a causal LM's head (its hidden states, no logits). transformers 5 finds it for
    every architecture through `get_decoder()`; 4.x returns the LM itself for some (GPT-2), whose stack is then
    its `base_model`."""
    decoder = model.get_decoder()
    return model.base_model if decoder is model else decoder
