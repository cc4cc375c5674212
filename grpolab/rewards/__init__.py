"""Reward functions: plain callables `(completion: str, example: dict) -> float | None`. No torch.

A reward of None means "does not apply" (ALGORITHMS.md section 1).
`combine` turns several named functions and their weights into the total and the per-function values.
"""

from __future__ import annotations

from collections.abc import Callable

RewardFunction = Callable[[str, dict], float | None]


def combine(
    functions: dict[str, RewardFunction], weights: dict[str, float], completions: list[str], examples: list[dict]
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Score every completion with every function; the total is the weighted sum of the non-None values."""
    per_function: dict[str, list[float | None]] = {}
    for name, function in functions.items():
        values = [function(completion, example) for completion, example in zip(completions, examples)]
        per_function[name] = [None if v is None else float(v) for v in values]
    totals = []
    for row in range(len(completions)):
        total = sum(weights[name] * values[row] for name, values in per_function.items() if values[row] is not None)
        totals.append(float(total))
    return totals, per_function
