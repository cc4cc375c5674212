"""grpolab: GRPO and the DeepSeek-R1 recipe. `grpolab.train(...)` is the Python API (grpolab/api.py); the
command line is `grpolab` (grpolab/cli.py)."""

from __future__ import annotations


def __getattr__(name: str):
    if name == "train":  # imported on first use: `import grpolab` (and the command line's start) stays light
        from grpolab.api import train

        return train
    raise AttributeError(f"module 'grpolab' has no attribute {name!r}")


__all__ = ["train"]
