"""Reward functions: plain callables `(completion: str, example: dict) -> float | None`. No torch.

A reward of None means "does not apply" (ALGORITHMS.md section 1). The modules: `math` (answer
correctness), `format`, `language`, `length`, `code` (with `sandbox`), `reward_model`, the optional
rewards every task offers (`optional`) and the runner that scores and combines them (`runner`).
`combine` is the runner without worker processes, for callers that have no config.
"""

from __future__ import annotations

from collections.abc import Callable

RewardFunction = Callable[[str, dict], float | None]


def combine(
    functions: dict[str, RewardFunction], weights: dict[str, float], completions: list[str], examples: list[dict]
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Score every completion with every function; the total is the weighted sum of the non-None values."""
    from grpolab.rewards.runner import RewardRunner

    scores = RewardRunner(functions, {name: weights.get(name, 0.0) for name in functions}, num_workers=0).score(
        completions, examples
    )
    return scores.totals, scores.parts
