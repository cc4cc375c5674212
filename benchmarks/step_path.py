"""The path of one GRPO step through grpolab's modules: every call into a grpolab function made (directly or
not) from `grpo_step`, as the sequence of modules entered, consecutive calls in one module merged. It shows
whether a step flows one way through the layers (ARCHITECTURE.md) or keeps going back.

    python benchmarks/step_path.py            # tiny-random, one step, a few seconds
"""

from __future__ import annotations

import sys
import tempfile

from grpolab.config import load_config
from grpolab.parallel.distributed import Parallel
from grpolab.training import trainer
from grpolab.training.setup import CountingStream, restore, setup


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else parts[-1]


def trace_step(max_depth: int = 1) -> list[str]:
    """Modules entered by the calls `grpo_step` makes (`max_depth` 1) and, deeper, by what those call."""
    overrides = ["model=tiny-random", "rollout.prompts_per_step=2", "rollout.group_size=4", "eval.n=0",
                 "rollout.max_new_tokens=8", "log.quiet=true", "log.tensorboard=false", "grpo.mu=2",
                 f"output_dir={tempfile.mkdtemp()}/run"]  # fmt: skip
    run, checkpoint = setup(load_config(None, overrides), lambda *a: None, Parallel())
    restore(run, checkpoint, lambda *a: None)
    stops: list[str] = []
    depth = [0]

    def profile(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("grpolab.") or frame.f_code.co_qualname.startswith("Timer."):
            return  # the phase timer is instrumentation, not a stop
        if event == "call":
            if frame.f_code.co_name == "grpo_step" or depth[0]:
                depth[0] += 1
                if 1 < depth[0] <= max_depth + 1 and (not stops or stops[-1] != module):
                    stops.append(module)
        elif event == "return" and depth[0]:
            depth[0] -= 1

    stream = CountingStream(run.task.train_stream(0), skip=0)
    sys.setprofile(profile)
    try:
        trainer.grpo_step(run, 1, stream)
    finally:
        sys.setprofile(None)
        run.rewards.close()
        run.lock.release()
    return stops


def main() -> None:
    stops = trace_step()
    layers = [layer(m) for m in stops]
    print(" -> ".join(stops))
    print(
        f"{len(stops)} stops in {len(set(stops))} modules; layers, first visits: {' -> '.join(dict.fromkeys(layers))}"
    )


if __name__ == "__main__":
    main()
