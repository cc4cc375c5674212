"""`grpolab eval`: a model on a task's held-out split (or every row of its data file, `rows=all`), scored
with the task's own answer checking. The model may be a run folder: its final/ is evaluated, on the run's
task and template unless `task` is given.

Greedy accuracy always; with k > 1 also k samples per problem at R1's evaluation settings (T = 0.6,
top-p 0.95 by default), from which pass@1 (mean correctness), maj@k (majority vote over extracted answers)
and unbiased pass@k are computed (ALGORITHMS.md section 8; the maths is in `algorithms/passk.py`).
Writes `eval.json` (the summary, in the layout `grpolab train` uses too: `rollout/evaluation.eval_summary`)
and `samples.jsonl` (every sample with its extracted answer and verdict).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import yaml

from grpolab.algorithms.passk import majority_correct, mean, pass_at_1, pass_at_k
from grpolab.config import GenerationRunConfig, check_ranges, to_yaml
from grpolab.engine import SamplingParams, make_engine
from grpolab.errors import ConfigError, TaskError
from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path, run_folder
from grpolab.model.precision import default_device
from grpolab.rollout.batch import encode_prompt
from grpolab.rollout.evaluation import eval_summary, greedy_accuracy
from grpolab.runs.folder import prepare_run_dir, write_json_atomic, write_text_atomic
from grpolab.tasks import get_task
from grpolab.tasks.data import FileTask


@dataclass
class EvalRunConfig(GenerationRunConfig):
    model: str = "smollm2-135m"  # a model name or folder, or a run folder (its final/)
    task: str = ""  # empty: the run's task when model is a run folder, else arithmetic
    # arithmetic's prompt (as train's template); empty: the run's when its task is used, else default
    template: Literal["", "default", "r1_zero"] = ""
    name: str = "eval-{task}-{time}"
    # held_out: the first n of the task's held-out split; all: every row of its data file, held-out first (n unused)
    rows: Literal["held_out", "all"] = "held_out"
    n: int = 100  # held-out problems (the first n of the task's fixed split)
    k: int = 1  # samples per problem for pass@1 / maj@k / pass@k; 1 = greedy only
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 48
    batch_size: int = 32  # sequences generated at once (prompts x samples)

    def validate(self) -> None:
        check_ranges(
            self,
            {
                "n": (lambda v: v >= 1, "an integer >= 1"),
                "k": (lambda v: v >= 1, "an integer >= 1"),
                "temperature": (lambda v: v > 0, "a float > 0 (greedy is always reported)"),
                "top_p": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
                "max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
                "batch_size": (lambda v: v >= 1, "an integer >= 1"),
            },
        )
        if not self.model:
            raise ConfigError(
                "model: must name a model (smollm2-135m, tiny-random, a folder, a run folder or a hub id)"
            )


def sample_groups(engine, tokenizer, task, examples, k: int, params: SamplingParams, batch_size: int):
    """k completions per example, generated `batch_size` sequences at a time; returns one list per example."""
    groups = []
    per_call = max(1, batch_size // k)
    for start in range(0, len(examples), per_call):
        chunk = examples[start : start + per_call]
        prompts = [encode_prompt(tokenizer, task, example) for example in chunk]
        chunk_params = SamplingParams(
            **{**params.__dict__, "seed": None if params.seed is None else params.seed + start}
        )
        groups.extend(engine.generate(prompts, k, chunk_params))
    return groups


def score_groups(task, examples, groups, k: int) -> tuple[dict, list[dict]]:
    """pass@1, maj@k and pass@k over the sampled groups, and one record per sample."""
    records, pass1, majority, passk = [], [], [], []
    for index, (example, group) in enumerate(zip(examples, groups)):
        answers = [task.extract_answer(c.text) for c in group]
        correct = [bool(task.is_correct(c.text, example)) for c in group]
        pass1.append(pass_at_1(correct))
        majority.append(float(majority_correct(answers, correct)))
        passk.append(pass_at_k(len(correct), sum(correct), k))
        for sample, (completion, answer, verdict) in enumerate(zip(group, answers, correct)):
            records.append(
                {
                    "index": index,
                    "mode": "sample",
                    "sample": sample,
                    "question": task.question(example),
                    "answer": example.get("answer"),
                    "completion": completion.text,
                    "extracted": answer,
                    "correct": verdict,
                    "finish_reason": completion.finish_reason,
                }
            )
    return {"pass@1": mean(pass1), "maj@k": mean(majority), "pass@k": mean(passk)}, records


def load_for_generation(model_name: str, engine_name: str, dtype: str, log=print):
    """(model, tokenizer, engine) on the best device, in eval mode, without gradients."""
    path = resolve_model_path(model_name, log=log)
    tokenizer = load_tokenizer(path)
    model = load_model(path).to(default_device()).eval().requires_grad_(False)
    return model, tokenizer, make_engine(engine_name, model, tokenizer, dtype)


def with_run_settings(config: EvalRunConfig) -> EvalRunConfig:
    """`task` and `template` filled in: an empty task is the run's when `model` is a run folder (and then so is an
    empty template), else arithmetic; an empty template is otherwise default. config.yaml records the result."""
    saved = {}
    folder = run_folder(config.model)
    if folder is not None and not config.task:
        try:
            saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"model: cannot read the run's config.yaml in {str(folder)!r} ({error})") from None
        saved = saved if isinstance(saved, dict) else {}
    task = config.task or str(saved.get("task") or "arithmetic")
    return replace(config, task=task, template=config.template or saved.get("template") or "default")


def eval_examples(task, config: EvalRunConfig) -> list[dict]:
    """The problems scored: the first n held-out examples, or (rows=all) every row of the task's data."""
    if config.rows == "all":
        if not isinstance(task, FileTask):
            raise ConfigError(f"rows: 'all' needs a task with a data file (e.g. jsonl:PATH); {config.task!r} has none")
        splits = task.splits()
        return splits.held_out + splits.train
    try:
        return task.eval_examples(config.n)
    except TaskError as error:  # the tasks name train's key, eval.n; here it is n
        if not str(error).startswith("eval.n:"):
            raise
        hint = " (rows=all scores every row of the data)" if isinstance(task, FileTask) else ""
        raise TaskError(f"n:{str(error).removeprefix('eval.n:')}{hint}") from None


def evaluate(config: EvalRunConfig, log=print) -> dict:
    """Run the evaluation, write eval.json and samples.jsonl, print the table; returns the summary."""
    config = with_run_settings(config)
    task = get_task(config.task, template=config.template)  # bad input fails before the folder is touched
    examples = eval_examples(task, config)
    if not examples:
        raise ConfigError(f"task: {config.task!r} has no held-out examples")
    model_path = resolve_model_path(config.model, log=log)  # a run folder without final/ is refused here
    run_dir = prepare_run_dir(config.run_dir(), config.overwrite)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    _, tokenizer, engine = load_for_generation(model_path, config.engine, config.dtype, log)
    greedy, greedy_samples = greedy_accuracy(
        engine, tokenizer, task, examples, config.max_new_tokens, config.batch_size, key="max_new_tokens"
    )
    records = [{"index": i, "mode": "greedy", "sample": 0, **s} for i, s in enumerate(greedy_samples)]
    summary = eval_summary(config.task, len(examples), greedy, model=config.model, rows=config.rows, k=config.k)
    if config.k > 1:
        params = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
        )
        groups = sample_groups(engine, tokenizer, task, examples, config.k, params, config.batch_size)
        sampled, sample_records = score_groups(task, examples, groups, config.k)
        summary.update(sampled)
        summary.update(temperature=config.temperature, top_p=config.top_p)
        records += sample_records
    summary["seconds"] = round(time.perf_counter() - start, 2)
    write_jsonl(run_dir / "samples.jsonl", records)
    write_json_atomic(run_dir / "eval.json", summary)
    log(format_table([summary]))
    return summary


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write through a temporary name so that a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    tmp.replace(path)


METRICS = ["accuracy", "pass@1", "maj@k", "pass@k"]  # accuracy: greedy


def format_table(rows: list[dict], label: str = "model", extra: tuple[str, ...] = ()) -> str:
    """A plain-text table: one row per evaluated model, one column per metric present in any row, then the
    `extra` columns as they are (`-` where a row has none)."""
    columns = [m for m in METRICS if any(m in row for row in rows)]
    header = [label, "n", "k", *[c.replace("@k", f"@{rows[0].get('k', 'k')}") for c in columns], *extra]
    body = [
        [str(row.get(label, row.get("model", ""))), str(row["n"]), str(row.get("k", 1))]
        + [f"{row[c]:.3f}" if c in row else "-" for c in columns]
        + [str(row[c]) if row.get(c) is not None else "-" for c in extra]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    render = lambda line: "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, body)])
