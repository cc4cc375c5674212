"""`grpolab bench generate`: tokens/s of the grpolab engine against transformers' `generate` (the `hf`
backend in fp32, as TRL runs it without vLLM), side by side in one process, on the same prompts.

Both sides are asked for exactly `new_tokens` tokens per sample (`ignore_eos`: the engine does not
stop on EOS, `generate` suppresses it via `min_new_tokens`), so tokens/s = prompts x samples x
new_tokens / median seconds of `repeats` timed runs after `warmup` untimed ones. The two backends
alternate within each repetition, so that load from other processes hits both alike.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from grpolab.config import apply_key, parse_override
from grpolab.engine.base import SamplingParams
from grpolab.errors import ConfigError

DTYPES = ("auto", "bf16", "fp32", "int8")


@dataclass
class GenerateBenchConfig:
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    prompts: int = 4
    samples: int = 8
    new_tokens: str = "64,256"  # comma-separated settings
    temperature: float = 1.0
    dtype: str = "auto"  # the engine's rollout.dtype, or several comma-separated (timed side by side); hf is fp32
    repeats: int = 3
    warmup: int = 1
    threads: int = 0  # torch threads for both sides; 0 keeps torch's default
    seed: int = 0


def parse(overrides: list[str]) -> GenerateBenchConfig:
    config = GenerateBenchConfig()
    for text in overrides:
        key, value = parse_override(text)
        apply_key(config, key.split("."), value, key)
    dtypes = str(config.dtype).split(",")
    if not all(d in DTYPES for d in dtypes) or len(set(dtypes)) != len(dtypes):
        raise ConfigError(f"dtype: got {config.dtype!r}, expected distinct comma-separated values of {DTYPES}")
    for key in ("prompts", "samples", "repeats"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(config, key)}")
    try:
        settings = [int(v) for v in str(config.new_tokens).split(",")]
    except ValueError:
        raise ConfigError(f"new_tokens: expected comma-separated integers, got {config.new_tokens!r}") from None
    if any(v < 1 for v in settings):
        raise ConfigError(f"new_tokens: every value must be >= 1, got {config.new_tokens!r}")
    return config


def timed(engine, prompts, samples, params) -> float:
    start = time.perf_counter()
    groups = engine.generate(prompts, samples, params)
    seconds = time.perf_counter() - start
    lengths = {len(c.token_ids) for group in groups for c in group}
    assert lengths == {params.max_new_tokens}, f"expected fixed-length completions, got lengths {lengths}"
    return seconds


def run(overrides: list[str]) -> int:
    from grpolab.engine.grpolab_engine import GrpolabEngine
    from grpolab.engine.hf import HFEngine
    from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path
    from grpolab.rollout.batch import encode_prompt
    from grpolab.tasks import get_task

    config = parse(overrides)
    if config.threads:
        torch.set_num_threads(config.threads)
    path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path).eval()
    task = get_task(config.task)
    prompts = [encode_prompt(tokenizer, task, example) for example in task.eval_examples(config.prompts)]
    backends = {"hf": HFEngine(model, tokenizer)}
    for dtype in config.dtype.split(","):
        backends[dtype] = GrpolabEngine(model, tokenizer, dtype=dtype)
    for new_tokens in [int(v) for v in config.new_tokens.split(",")]:
        params = dict(max_new_tokens=new_tokens, temperature=config.temperature, ignore_eos=True)
        times: dict[str, list[float]] = {name: [] for name in backends}
        for repeat in range(config.warmup + config.repeats):
            sampling = SamplingParams(seed=config.seed + repeat, **params)
            for name, backend in backends.items():
                seconds = timed(backend, prompts, config.samples, sampling)
                if repeat >= config.warmup:
                    times[name].append(seconds)
                kind = "timed" if repeat >= config.warmup else "warm-up"
                print(f"[{new_tokens} tokens] {name} {kind} run: {seconds:.2f} s", file=sys.stderr, flush=True)
        tokens = config.prompts * config.samples * new_tokens
        hf_rate = tokens / statistics.median(times["hf"])
        for name, engine in backends.items():
            if name == "hf":
                continue
            engine_rate = tokens / statistics.median(times[name])
            record = {
                "model": config.model,
                "batch": config.prompts * config.samples,
                "prompts": config.prompts,
                "samples": config.samples,
                "prompt_tokens": [len(p) for p in prompts],
                "new_tokens": new_tokens,
                "token_count": "fixed: every sample generates new_tokens (EOS ignored)",
                "rollout_dtype": name,
                "engine_dtype": "int8" if engine.int8 else str(engine.dtype).removeprefix("torch."),
                "engine_path": "packed" if engine.packed is not None else "transformers",
                "hf_dtype": "float32",
                "threads": torch.get_num_threads(),
                "engine_tokens_per_s": round(engine_rate, 1),
                "hf_tokens_per_s": round(hf_rate, 1),
                "speedup": round(engine_rate / hf_rate, 2),
                "engine_seconds": [round(t, 3) for t in times[name]],
                "hf_seconds": [round(t, 3) for t in times["hf"]],
                "config": asdict(config),
            }
            print(json.dumps(record), flush=True)
    return 0
