"""int8 rollout weights: the kernels per projection, and the price in log-prob mismatch against the exact trainer.

    python benchmarks/int8_rollouts.py kernels      # microseconds per call, SmolLM2-135M's projection shapes
    python benchmarks/int8_rollouts.py mismatch [--alpha A] [--skip int_mm,bf16]  # mean |log-prob mismatch| per token

`kernels`: 32 rows (GRPO's 4 prompts x 8), medians of 5 repetitions of 200 calls (20 for the head), one thread
setting for all. `mismatch`: SmolLM2-135M, 4 arithmetic prompts x 8 samples x 64 tokens at T = 1, sampled by each
engine variant and scored by the fp32 model (what the trainer computes). One JSON line per row, on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (960, 576), "out": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}
ROWS = 32


def per_call_us(function, calls: int) -> float:
    for _ in range(10):
        function()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1e6


def kernel_row(name: str, out_features: int, in_features: int) -> dict:
    from grpolab.engine.decoder import onednn_bf16_reorder_works
    from grpolab.engine.int8 import Int8Linear, fbgemm_works

    torch.manual_seed(0)
    weight, x = torch.randn(out_features, in_features) * 0.02, torch.randn(ROWS, in_features)
    calls = 20 if name == "head" else 200
    row = {"projection": name, "shape": [out_features, in_features], "rows": ROWS}
    row["fp32_f_linear"] = per_call_us(lambda: F.linear(x, weight), calls)
    if onednn_bf16_reorder_works():
        packed, xb = torch.ops.mkldnn._reorder_linear_weight(weight.bfloat16(), ROWS), x.bfloat16()
        row["bf16_prepacked"] = per_call_us(
            lambda: torch.ops.mkldnn._linear_pointwise(xb, packed, None, "none", [], ""), calls
        )
    for backend in ("int_mm", "fbgemm", "fbgemm_rows") if fbgemm_works() else ("int_mm",):
        layer = Int8Linear(weight, None, backend=backend)
        row[f"int8_{backend}"] = per_call_us(lambda layer=layer: layer(x), calls)
    return {key: round(value, 1) if isinstance(value, float) else value for key, value in row.items()}


def kernels() -> None:
    for name, (out_features, in_features) in SHAPES.items():
        print(json.dumps(kernel_row(name, out_features, in_features)), flush=True)


def mismatch(skip: set[str]) -> None:
    from grpolab.engine import int8
    from grpolab.engine.base import SamplingParams
    from grpolab.engine.grpolab_engine import GrpolabEngine
    from grpolab.engine.hf import left_pad
    from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path
    from grpolab.model.scoring import completion_logprobs
    from grpolab.rollout.batch import encode_prompt, right_pad
    from grpolab.tasks import get_task

    path = resolve_model_path("smollm2-135m")
    tokenizer, model = load_tokenizer(path), load_model(path).eval()
    task = get_task("arithmetic")
    prompts = [encode_prompt(tokenizer, task, example) for example in task.eval_examples(4)]
    params = SamplingParams(max_new_tokens=64, temperature=1.0, seed=0)
    variants = {  # name: (rollout.dtype, int8 backend, smoothing)
        "fp32": ("fp32", None, True),
        "bf16": ("bf16", None, True),
        "int8 (default: per-row activations through fbgemm, smoothed)": ("int8", "fbgemm_rows", True),
        "int8 int_mm per-row activations, smoothed": ("int8", "int_mm", True),
        "int8 per-row activations, no smoothing": ("int8", "int_mm", False),
        "int8 fbgemm per-tensor activations, smoothed": ("int8", "fbgemm", True),
        "int8 fbgemm per-tensor activations, no smoothing": ("int8", "fbgemm", False),
    }
    default_backend, maxima = int8.default_backend, int8.activation_maxima
    for name, (dtype, backend, smoothing) in variants.items():
        if (backend in ("fbgemm", "fbgemm_rows") and not int8.fbgemm_works()) or skip & {backend, dtype}:
            continue
        int8.default_backend = (lambda chosen=backend: chosen) if backend else default_backend
        int8.activation_maxima = maxima if smoothing else (lambda *args: {})
        groups = GrpolabEngine(model, tokenizer, dtype=dtype).generate(prompts, 8, params)
        completions = [c for group in groups for c in group]
        prompt_ids, prompt_mask = left_pad([p for p in prompts for _ in range(8)], tokenizer.pad_token_id)
        ids = right_pad([c.token_ids for c in completions], tokenizer.pad_token_id, torch.long)
        mask = right_pad([[1] * len(c.token_ids) for c in completions], 0, torch.long)
        with torch.no_grad():
            exact, _ = completion_logprobs(model, prompt_ids, prompt_mask, ids, mask)
        sampled = right_pad([c.logprobs for c in completions], 0.0, torch.float32)
        gap = (((exact - sampled).abs() * mask).sum() / mask.sum()).item()
        print(json.dumps({"variant": name, "mean_abs_logprob_mismatch": round(gap, 4)}), flush=True)
    int8.default_backend, int8.activation_maxima = default_backend, maxima


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["kernels", "mismatch"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=None, help="SmoothQuant's alpha (default: the engine's)")
    parser.add_argument("--skip", default="", help="mismatch: comma-separated int8 backends or dtypes to leave out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.alpha is not None:
        from grpolab.engine import int8

        int8.SMOOTHING_ALPHA = args.alpha
    kernels() if args.what == "kernels" else mismatch(set(filter(None, args.skip.split(","))))
