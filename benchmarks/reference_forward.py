"""The frozen reference's forward: the transformers model against the engine's packed decoder
(`train.reference_forward`), on one real rollout of the default run's shape.

    python benchmarks/reference_forward.py [--repeats 5] [--prompts 8] [--group 8] [--tokens 32]

SmolLM2-135M, arithmetic prompts, completions sampled by the engine at T = 1. For each precision the CPU runs
(bf16 autocast where it has bf16, and fp32), both forwards score the same batch as the trainer's reference pass
does (`batch_logprobs`: one 64-row pass, prompts shared); seconds are the median of `--repeats` passes, taken in
turn. `gap`: mean |log-prob difference| per completion token against the transformers forward of the same
precision; `kl_step1`: the mean k3 KL per token the first step would log against the policy. One JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def rollout(prompts: int, group: int, tokens: int):
    from grpolab.config import load_config
    from grpolab.parallel.distributed import Parallel
    from grpolab.rollout.sampling import sample_rollout
    from grpolab.training.setup import setup

    overrides = [
        f"rollout.prompts_per_step={prompts}", f"rollout.group_size={group}", f"rollout.max_new_tokens={tokens}",
        "log.quiet=true", "log.report=false", "log.tensorboard=false", "train.reference_forward=transformers",
        "overwrite=true", f"output_dir={tempfile.mkdtemp()}/run",
    ]  # fmt: skip
    config = load_config(None, overrides)
    run, _ = setup(config, lambda *_: None, Parallel())
    stream = run.task.train_stream(config.seed)
    batch, _ = sample_rollout(run.engine, run.tokenizer, run.task, stream, run.rewards, config, 1)
    return run, batch


def main() -> None:
    from grpolab.model.precision import use_bf16
    from grpolab.training.experience import batch_logprobs
    from grpolab.training.reference import Reference

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    run, batch = rollout(args.prompts, args.group, args.tokens)
    mask = batch.completion_mask.bool()
    size = run.config.train.scoring_batch_size
    for bf16 in [True, False] if use_bf16("auto", torch.device("cpu")) else [False]:
        dtype = torch.bfloat16 if bf16 else torch.float32
        forwards = {
            "transformers": Reference(run.policy, bf16_matmuls=bf16),
            "packed": Reference(run.policy, packed_dtype=dtype),
        }

        def score(model, bf16=bf16):
            return batch_logprobs(model, batch, size, 1.0, bf16, run.device, True)

        policy = score(run.policy)
        seconds = {name: [] for name in forwards}
        logprobs = {}
        for _ in range(args.repeats):
            for name, reference in forwards.items():
                start = time.perf_counter()
                with reference.model() as model:
                    logprobs[name] = score(model)
                seconds[name].append(time.perf_counter() - start)
        base = logprobs["transformers"]
        for name in forwards:
            delta = logprobs[name] - policy
            kl = (delta.exp() - delta - 1)[mask].mean().item()
            print(json.dumps({
                "precision": "bf16" if bf16 else "fp32", "forward": name, "rows": batch.completion_ids.shape[0],
                "completion_tokens": int(mask.sum()), "prompt_width": batch.prompt_ids.shape[1],
                "seconds_median": round(statistics.median(seconds[name]), 4),
                "seconds": [round(s, 4) for s in seconds[name]],
                "speedup_vs_transformers": round(
                    statistics.median(seconds["transformers"]) / statistics.median(seconds[name]), 3
                ),
                "gap": round((logprobs[name] - base).abs()[mask].mean().item(), 6), "kl_step1": kl,
                "threads": torch.get_num_threads(),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
