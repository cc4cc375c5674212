"""`grpolab plan`: the memory and time of the worst step a config allows, measured before the run.

A child process (`python -m grpolab.training.plan CONFIG.yaml`: neither its memory nor its weights touch the
caller) builds the run exactly as `grpolab train` does, in a temporary folder, and takes `PLAN_STEPS` GRPO
steps on the longest training prompt among the first `SCAN_ROWS` rows, repeated to fill the step, with every
completion forced to `rollout.max_new_tokens` (the engine ignores stop tokens). The first step allocates the
optimizer's moments; the second is the steady state: the peak over both is what a long run reaches when its
longest sample finally comes. For each phase it records the seconds and the peak resident memory while the
phase ran (VmHWM, reset at the phase's start through /proc/self/clear_refs), and after the steps the state
memory by part: the bytes of the tensors the run holds between steps.

What would fit a smaller limit is estimated from those parts (`training/plan_check.py`: each lever's saving is
the state it removes; activation checkpointing's is bounded by the policy phase's rise above its start) and
printed as settings to try; `grpolab plan` again with them measures instead of estimating.
`train.memory_limit_gb` runs the same plan before a run's first step and refuses the run, in one line, when the
worst case would not fit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import tempfile
import time
from dataclasses import replace

import torch

from grpolab.config import Config, load_config
from grpolab.training.plan_check import PLAN_STEPS, SCAN_ROWS


def rss_gb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak() -> None:
    """VmHWM back to the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


class PhasePeaks:
    """Installed as `Timer.watch`: the peak resident memory (GB) of every phase of the current step (phases may
    nest: each reset first folds the peak so far into every phase still running) and of the whole plan."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.starts: dict[str, float] = {}
        self.active: list[str] = []
        self.overall = 0.0
        self.steps: list[dict[str, float]] = []  # the peaks of the steps before the current one

    def fold(self) -> None:
        peak = rss_gb("VmHWM")
        self.overall = max(self.overall, peak)
        for phase in self.active:
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), peak)
        reset_peak()

    @contextlib.contextmanager
    def __call__(self, phase: str):
        self.fold()
        if phase == "generate" and not self.active:  # a new step: its phases replace the last one's
            if self.peaks:
                self.steps.append(self.peaks)
            self.peaks, self.starts = {}, {}
        self.starts.setdefault(phase, rss_gb())
        self.active.append(phase)
        try:
            yield
        finally:
            self.fold()
            self.active.remove(phase)


class LongestCompletions:
    """The run's engine, always generating `max_new_tokens` (stop tokens ignored)."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, prompts, n, params, on_token=None):
        return self.engine.generate(prompts, n, replace(params, ignore_eos=True))

    def __getattr__(self, name):
        return getattr(self.engine, name)


def longest_prompt(task, tokenizer, seed: int) -> tuple[dict, int]:
    from grpolab.rollout.batch import encode_prompt

    rows = itertools.islice(task.train_stream(seed), SCAN_ROWS)
    return max(((row, len(encode_prompt(tokenizer, task, row))) for row in rows), key=lambda pair: pair[1])


def tensor_gb(tensors) -> float:
    seen, total = set(), 0
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total / 1e9


def tensors_in(value, depth: int = 0):
    """The tensors an engine's runner holds (its packed copy of the weights), found through its attributes."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 4 and isinstance(value, list | tuple):
        for item in value:
            yield from tensors_in(item, depth + 1)
    elif depth < 4 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
        for item in vars(value).values():
            yield from tensors_in(item, depth + 1)


def address(tensor: torch.Tensor) -> int | None:
    """Where a tensor's data lives; None for one without storage (oneDNN's prepacked weights)."""
    try:
        return tensor.data_ptr()
    except RuntimeError:
        return None


def state_memory(run) -> dict:
    """The bytes of what a run holds between steps, by part (GB). Gradients are counted at their peak: one per
    trainable parameter (fp32), or with the update in the backward the largest one alone."""
    from grpolab.training.setup import unwrapped

    value = unwrapped(run.value_model) if run.value_model is not None else None
    value_ids = {id(p) for p in value.parameters()} if value is not None else set()
    trainable = [p for group in run.optimizer.param_groups for p in group["params"] if id(p) not in value_ids]
    moments = [t for state in run.optimizer.state.values() for t in state.values() if hasattr(t, "numel")]
    reference = []
    if run.reference is not None and run.reference.packed is not None:
        reference = list(tensors_in(run.reference.packed.decoder))
    elif run.reference is not None and run.reference.frozen is not None:
        reference = list(run.reference.frozen.parameters())
    weights = {p.data_ptr() for p in run.policy.parameters()}
    engine = getattr(run.engine, "engine", run.engine)
    copies = [t for t in tensors_in(getattr(engine, "packed", None)) if address(t) not in weights]
    if getattr(engine, "generic", None) is not None and engine.generic.model is not run.rollout_model:
        copies += list(engine.generic.model.parameters())
    gradients = [max(trainable, key=torch.Tensor.numel)] if run.step_in_backward is not None else trainable
    return {
        "weights": tensor_gb(run.policy.parameters()),
        "gradients": tensor_gb(gradients) if trainable else 0.0,
        "optimizer": tensor_gb(moments),
        "value_model": tensor_gb(value.parameters()) * 2 if value is not None else 0.0,  # weights + gradients
        "reference": tensor_gb(reference),
        "engine_copy": tensor_gb(copies),
    }


def measure(config: Config) -> dict:
    """The plan itself (in this process): set-up, PLAN_STEPS worst-case steps, the phases and the state."""
    from grpolab.parallel.distributed import Parallel
    from grpolab.training.metrics import Timer
    from grpolab.training.setup import restore, save_training_checkpoint, setup
    from grpolab.training.trainer import finish, training_loop

    baseline = rss_gb()
    with tempfile.TemporaryDirectory() as folder:
        config = replace(config, output_dir=folder, name="plan", overwrite=True, resume=False)
        config.log = replace(config.log, quiet=True, report=False)
        config.train = replace(config.train, max_steps=PLAN_STEPS, max_minutes=0.0)
        run, _ = setup(config, lambda *_: None, Parallel())
        after_setup = rss_gb()
        example, prompt_tokens = longest_prompt(run.task, run.tokenizer, config.seed)
        run.task.train_stream = lambda seed: itertools.repeat(example)  # this process's task object only
        run.engine = LongestCompletions(run.engine)
        peaks, extra = PhasePeaks(), {}

        def phase(name: str, work) -> None:  # a part of a run outside its steps, timed and watched
            begin = time.perf_counter()
            with peaks(name):
                work()
            extra[name] = time.perf_counter() - begin

        Timer.watch = peaks
        try:  # the run's own loop: its evaluations, metrics and tracking are in the peak too
            results = training_loop(run, restore(run, None, print), lambda *_: None)
            if config.train.save_every:  # a run saves checkpoints between its steps
                phase("checkpoint", lambda: save_training_checkpoint(run, PLAN_STEPS, restore(run, None, print)))
            phase("final", lambda: finish(run, results, lambda *_: None))
        finally:
            Timer.watch = None
            run.rewards.close()
        peaks.fold()
        state = state_memory(run)
        records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["step_seconds"] for r in records]
    phases = {**{k.removeprefix("time/"): v for k, v in records[-1].items() if k.startswith("time/")}, **extra}
    peak = max(peaks.overall, after_setup)
    policy_rise = peaks.peaks.get("policy", 0.0) - peaks.starts.get("policy", 0.0)
    return {
        "model": config.model,
        "completions_per_step": config.rollout.prompts_per_step * config.rollout.group_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": config.rollout.max_new_tokens,
        "peak_gb": round(peak, 3),
        "baseline_gb": round(baseline, 3),
        "after_setup_gb": round(after_setup, 3),
        "step_seconds": [round(s, 2) for s in seconds],
        "phases": {
            name: {"seconds": round(phases.get(name, 0.0), 2), "peak_gb": round(peaks.peaks[name], 3)}
            for name in peaks.peaks
        },  # fmt: skip
        "earlier_steps_peak_gb": [{name: round(gb, 3) for name, gb in step.items()} for step in peaks.steps],
        "state_gb": {part: round(gb, 6) for part, gb in state.items()},
        "policy_rise_gb": round(max(0.0, policy_rise), 3),
    }


def main(argv: list[str]) -> int:
    from grpolab.cli import build_parser
    from grpolab.model.memory import keep_freed_memory

    keep_freed_memory()  # as `grpolab train` does
    build_parser()  # and with the modules it has loaded
    config = load_config(argv[0])
    print(json.dumps(measure(config)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
