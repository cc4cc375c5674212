"""The rollout engine interface. It knows nothing about training.

    engine.generate(prompts: list[list[int]], n, SamplingParams) -> list[list[Completion]]

returns, for every prompt, n completions with their token ids, the per-token log-probs under the
sampling distribution (after temperature / top-k / top-p), and a finish reason ("stop" or "length").
The completion's token ids include the stop token when generation stopped on one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks only: never stop on a stop token, always max_new_tokens


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    text: str = ""


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares the module)."""
        ...
