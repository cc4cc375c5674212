"""`grpolab sample`: rejection sampling (R1 section 2.3.3). For each training prompt of the task, k samples
from the model; a sample is kept when its reward (the task's reward functions with the configured weights,
the same code GRPO trains on) reaches `threshold`, when it finished on its own (not cut at the token limit),
and when it is readable (`readability.py`); duplicates within a prompt are dropped; at most
`max_per_prompt` samples per prompt are kept, in the order they were sampled.

Writes `data.jsonl` (SFT-ready: `messages` = the task's prompt + the kept answer, plus its reward),
`samples.jsonl` (every sample with the reason it was dropped, if it was) and `summary.json` (the counts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grpolab.config import GenerationRunConfig, RewardConfig, check_ranges, to_yaml
from grpolab.engine import SamplingParams
from grpolab.errors import ConfigError
from grpolab.rewards import combine
from grpolab.rewards.runner import resolve_weights
from grpolab.runs.folder import prepare_run_dir, write_json_atomic, write_text_atomic
from grpolab.stages.evaluate import load_for_generation, sample_groups, write_jsonl
from grpolab.stages.readability import normalised, unreadable_reason
from grpolab.tasks import get_task


@dataclass
class RejectionConfig:
    prompts: int = 64  # training prompts, the first of the task's seeded training stream
    k: int = 8  # samples per prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 48
    threshold: float = 1.0  # keep a sample whose total reward is >= this
    max_per_prompt: int = 2
    keep_truncated: bool = False  # a sample cut at max_new_tokens has no reliable ending
    max_repetition: float = 0.5  # largest share of repeated word 4-grams
    max_foreign_script: float = 0.02  # largest share of letters outside the main script
    batch_size: int = 32  # sequences generated at once


REJECTION_RANGES = {
    "prompts": (lambda v: v >= 1, "an integer >= 1"),
    "k": (lambda v: v >= 1, "an integer >= 1"),
    "temperature": (lambda v: v > 0, "a float > 0"),
    "top_p": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "max_per_prompt": (lambda v: v >= 1, "an integer >= 1"),
    "max_repetition": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "max_foreign_script": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
}


@dataclass
class SampleConfig(GenerationRunConfig):
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    name: str = "sample-{task}-{time}"
    reward: RewardConfig = field(default_factory=RewardConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)

    def validate(self) -> None:
        check_ranges(self, {f"rejection.{key}": check for key, check in REJECTION_RANGES.items()})
        if not self.model:
            raise ConfigError("model: must name a model (smollm2-135m, tiny-random, a folder or a hub id)")


def select(group: list[dict], rejection: RejectionConfig) -> None:
    """Mark each sample of one prompt with `kept` and, when dropped, the first `reason` that applies."""
    seen: set[str] = set()
    kept = 0
    for sample in group:
        reason = None
        if sample["reward"] < rejection.threshold:
            reason = "reward"
        elif sample["finish_reason"] == "length" and not rejection.keep_truncated:
            reason = "truncated"
        else:
            reason = unreadable_reason(sample["completion"], rejection.max_repetition, rejection.max_foreign_script)
        if reason is None and normalised(sample["completion"]) in seen:
            reason = "duplicate"
        if reason is None and kept >= rejection.max_per_prompt:
            reason = "cap"
        if reason is None:
            seen.add(normalised(sample["completion"]))
            kept += 1
        sample["kept"], sample["reason"] = reason is None, reason


def rejection_sample(config: SampleConfig, log=print) -> Path:
    """Sample, filter and write the SFT-ready data; returns the run folder."""
    task = get_task(config.task)  # bad input fails before the folder is touched
    weights = resolve_weights(task, config.reward.weights)
    run_dir = prepare_run_dir(config.run_dir(), config.overwrite)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    functions = {name: f for name, f in task.reward_functions().items() if weights.get(name, 0.0) != 0.0}
    rejection = config.rejection
    stream = task.train_stream(config.seed)
    examples = [next(stream) for _ in range(rejection.prompts)]
    _, tokenizer, engine = load_for_generation(config.model, config.engine, config.dtype, log)
    params = SamplingParams(
        max_new_tokens=rejection.max_new_tokens,
        temperature=rejection.temperature,
        top_p=rejection.top_p,
        seed=config.seed,
    )
    groups = sample_groups(engine, tokenizer, task, examples, rejection.k, params, rejection.batch_size)
    records, data = [], []
    for index, (example, group) in enumerate(zip(examples, groups)):
        texts = [c.text for c in group]
        totals, _ = combine(functions, weights, texts, [example] * len(texts))
        samples = [
            {"index": index, "completion": c.text, "reward": r, "finish_reason": c.finish_reason}
            for c, r in zip(group, totals)
        ]
        select(samples, rejection)
        records += samples
        for sample in samples:
            if sample["kept"]:
                messages = task.messages(example) + [{"role": "assistant", "content": sample["completion"]}]
                data.append({"messages": messages, "reward": sample["reward"], "answer": example.get("answer")})
    write_jsonl(run_dir / "samples.jsonl", records)
    write_jsonl(run_dir / "data.jsonl", data)
    summary = sampling_summary(records, len(examples), time.perf_counter() - start)
    write_json_atomic(run_dir / "summary.json", summary)
    log(
        f"sample: kept {summary['kept']} of {summary['samples']} samples ({summary['prompts_with_data']} of "
        f"{summary['prompts']} prompts); dropped: {summary['dropped']}; data: {run_dir / 'data.jsonl'}"
    )
    return run_dir


def sampling_summary(records: list[dict], prompts: int, seconds: float) -> dict:
    dropped: dict[str, int] = {}
    for record in records:
        if record["reason"]:
            dropped[record["reason"]] = dropped.get(record["reason"], 0) + 1
    return {
        "prompts": prompts,
        "samples": len(records),
        "kept": sum(r["kept"] for r in records),
        "prompts_with_data": len({r["index"] for r in records if r["kept"]}),
        "dropped": dropped,
        "seconds": round(seconds, 2),
    }
