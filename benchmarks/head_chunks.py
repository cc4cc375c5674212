"""The output head's products by row count, and `SelectedLogprobs` (forward and backward) by the rows each of
its head products takes (`LOGIT_CHUNK_TOKENS`), on random tensors of SmolLM2-135M's head (49,152 x 576).

    python benchmarks/head_chunks.py [--tokens 1752] [--repeats 5] [--dtype fp32|bf16]

`--tokens`: completion tokens in the pass (1,752 in one rollout of issue 7's configuration). Seconds are the
fastest of `--repeats` runs after one warm-up (a product's speed on a quiet machine; noise only adds). One JSON
line per row.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from grpolab.model import scoring

VOCAB, HIDDEN = 49152, 576


def fastest(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1752)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN).to(dtype) * 0.02
    for rows in [64, 128, 256, 512, 1024]:
        h, g = torch.randn(rows, HIDDEN).to(dtype), torch.randn(rows, VOCAB).to(dtype)
        flop = 2 * rows * HIDDEN * VOCAB
        products = {
            "h_wT": lambda h=h: h @ weight.T, "g_w": lambda g=g: g @ weight, "gT_h": lambda g=g, h=h: g.T @ h,
        }  # fmt: skip
        for name, fn in products.items():
            seconds = fastest(fn, args.repeats)
            print(json.dumps({"product": name, "rows": rows, "dtype": args.dtype, "ms": round(seconds * 1e3, 2),
                              "gflop_per_s": round(flop / seconds / 1e9, 1)}))  # fmt: skip
    hidden = torch.randn(args.tokens, HIDDEN, requires_grad=True)
    parameter = torch.nn.Parameter(weight.float())
    targets = torch.randint(0, VOCAB, (args.tokens,))
    default = scoring.LOGIT_CHUNK_TOKENS
    for rows in [64, 128, 256, 512, 1024]:
        scoring.LOGIT_CHUNK_TOKENS = rows

        def pass_():
            logprobs, _ = scoring.SelectedLogprobs.apply(hidden, parameter, targets, 1.0, dtype, False)
            logprobs.sum().backward()
            hidden.grad, parameter.grad = None, None

        print(json.dumps({"selected_logprobs_rows": rows, "tokens": args.tokens, "dtype": args.dtype,
                          "seconds": round(fastest(pass_, args.repeats), 3)}))  # fmt: skip
    scoring.LOGIT_CHUNK_TOKENS = default


if __name__ == "__main__":
    main()
