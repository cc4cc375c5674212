"""Held-out evaluation through the task's own answer checking, and the layout of `eval.json`.

Greedy accuracy is what `train` reports before and after training and what `grpolab eval` reports first.
Both commands write their results in one layout (`eval_summary`): the task, the number of problems scored
and the greedy `accuracy`, then what else was measured; `train`'s file holds one such record under
`before` and one under `after`, with the reason training stopped (`stop_reason`).
"""

from __future__ import annotations

from grpolab.engine.base import SamplingParams
from grpolab.rollout.batch import check_context, encode_prompt


def greedy_accuracy(
    engine,
    tokenizer,
    task,
    examples: list[dict],
    max_new_tokens: int,
    batch_size: int = 64,
    key: str = "eval.max_new_tokens",
):
    """Greedy-decode every example; returns (accuracy, samples) where samples hold the text and verdict.
    `key` names the command's max_new_tokens setting in the error of a prompt that leaves it no room."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    samples = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, task, example) for example in chunk]
        check_context(getattr(engine, "model", None), prompts, max_new_tokens, key)
        for example, group in zip(chunk, engine.generate(prompts, 1, params)):
            text = group[0].text
            samples.append(
                {
                    "question": task.question(example),
                    "answer": example.get("answer"),
                    "completion": text,
                    "extracted": task.extract_answer(text),
                    "correct": task.is_correct(text, example),
                }
            )
    accuracy = sum(s["correct"] for s in samples) / max(1, len(samples))
    return accuracy, samples


def eval_summary(task: str, n: int, accuracy: float, **measured) -> dict:
    """One evaluation as eval.json holds it: the task, the problems scored, greedy accuracy, then the rest
    (`grpolab eval`: model, k, pass@1, maj@k, pass@k, ...)."""
    return {"task": task, "n": n, "accuracy": accuracy, **measured}


def training_eval_summary(task: str, results: dict) -> dict:
    """`grpolab train`'s eval.json: the task and n, why training stopped (`stop_reason`: max_steps or
    time_budget), then `before` / `after` (those that ran), each an `eval_summary`. `results` is the loop's
    `{"n": ..., "stop_reason": ..., "before": {"accuracy": ...}, ...}`."""
    n = results["n"]
    evaluated = {
        when: eval_summary(task, n, results[when]["accuracy"]) for when in ("before", "after") if when in results
    }
    stopped = {"stop_reason": results["stop_reason"]} if "stop_reason" in results else {}
    return {"task": task, "n": n, **stopped, **evaluated}
