"""Format rewards. Pure Python: no torch.

`answer_last`: the completion ends with its answer (a number is the last thing written), which is
the arithmetic task's optional shaping reward. The R1 template rewards (`<think>` / `<answer>`) are here too:
strict (the whole completion is exactly the template) and partial (0.25 per tag used exactly once).
"""

from __future__ import annotations

import re

NO_TAG = r"(?:(?!</?think>|</?answer>).)*"  # text holding no template tag: each tag appears once
R1_STRICT = re.compile(rf"^\s*<think>{NO_TAG}</think>\s*<answer>{NO_TAG}</answer>\s*$", re.DOTALL)


def answer_last(completion: str) -> float:
    """1.0 when the completion is short and ends with a number (optionally followed by punctuation)."""
    return 1.0 if re.search(r"-?\d+\s*[.!]?\s*$", completion.strip()) else 0.0


def r1_format_strict(completion: str) -> float:
    """1.0 for exactly `<think>...</think> <answer>...</answer>` (DeepSeek-R1's format reward)."""
    return 1.0 if R1_STRICT.match(completion) else 0.0


def r1_format_partial(completion: str) -> float:
    """0.25 per R1 tag present exactly once, for a denser signal early in training."""
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    return sum(0.25 for tag in tags if completion.count(tag) == 1)
