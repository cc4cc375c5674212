"""`grpolab eval --model M --task T [CONFIG.yaml] [key=value ...]`: greedy accuracy, pass@1, maj@k, pass@k."""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser, load_stage_config


def register(subparsers) -> None:
    from grpolab.stages.evaluate import EvalRunConfig

    parser = add_stage_parser(
        subparsers,
        "eval",
        EvalRunConfig,
        "evaluate a model on a task's held-out split",
        "Greedy accuracy; with k > 1 also pass@1 (mean over k samples, T=0.6, top-p 0.95 by default), "
        "maj@k and unbiased pass@k. Writes eval.json and samples.jsonl into output_dir.",
    )
    parser.add_argument("--model", help="model: smollm2-135m, tiny-random, a folder or a hub id (key model=)")
    parser.add_argument("--task", help="task name (key task=)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.evaluate import EvalRunConfig, evaluate

    extra = [f"model={args.model}"] * bool(args.model) + [f"task={args.task}"] * bool(args.task)
    evaluate(load_stage_config(args, EvalRunConfig, extra))
    return 0
