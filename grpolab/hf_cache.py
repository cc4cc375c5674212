"""The key/value cache argument of a transformers model's forward, under either of its names.

transformers 5.2x renamed `past_key_values` to `cache` (in the forward's arguments and in its outputs) and
removes the old name in 5.40; older releases know only `past_key_values`. grpolab passes whichever name the
model's own forward declares, so the same code runs on both sides of the rename without deprecation warnings.
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
