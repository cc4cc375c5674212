"""Rollout engines behind one small interface (see `base.py`)."""

from __future__ import annotations

from grpolab.engine.base import Completion, Engine, SamplingParams


def make_engine(name: str, model, tokenizer, dtype: str = "auto", share_weights: bool = False) -> Engine:
    """`rollout.engine`: `grpolab` (the engine built for GRPO) or `hf` (transformers `generate`). With
    `share_weights` the grpolab engine runs `model` itself (its transformers forward) instead of a packed copy."""
    if name == "hf":
        from grpolab.engine.hf import HFEngine

        return HFEngine(model, tokenizer)
    if name == "grpolab":
        from grpolab.engine.grpolab_engine import GrpolabEngine

        return GrpolabEngine(model, tokenizer, dtype=dtype, packed=not share_weights)
    raise ValueError(f"rollout.engine: unknown engine {name!r}")


__all__ = ["Completion", "Engine", "SamplingParams", "make_engine"]
