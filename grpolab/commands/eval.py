"""`grpolab eval [CONFIG.yaml] model=M task=T [key=value ...]`: greedy accuracy, pass@1, maj@k, pass@k. Like
every command it takes keys as `key=value`; `--model M` is refused with that hint (grpolab/cli.py)."""

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
        "maj@k and unbiased pass@k. Writes eval.json and samples.jsonl into output_dir.\n\n"
        "model may be a run folder (model=runs/NAME): its final/ is evaluated, on the run's task and template "
        "unless task= is given.\n"
        "rows=held_out (default) scores the first n problems of the task's held-out split (a single data file "
        "holds out every tenth row); rows=all scores every row of the task's data file, e.g. "
        "task=jsonl:test.jsonl rows=all (n is then not used).",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.evaluate import EvalRunConfig, evaluate

    evaluate(load_stage_config(args, EvalRunConfig, []))
    return 0
