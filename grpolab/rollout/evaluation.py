"""Held-out evaluation through the task's own answer checking. Greedy accuracy is what `train` reports
before and after training."""

from __future__ import annotations

from grpolab.engine.base import SamplingParams
from grpolab.rollout.batch import check_context, encode_prompt


def greedy_accuracy(engine, tokenizer, task, examples: list[dict], max_new_tokens: int, batch_size: int = 64):
    """Greedy-decode every example; returns (accuracy, samples) where samples hold the text and verdict."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    samples = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, task, example) for example in chunk]
        check_context(getattr(engine, "model", None), prompts, max_new_tokens, "eval.max_new_tokens")
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
