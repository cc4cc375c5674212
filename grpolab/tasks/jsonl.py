"""`jsonl:PATH`: any JSONL file (or a folder with train.jsonl and test.jsonl) of questions and reference
answers. Field names default to `question` and `answer`; others are given after the path:
`task=jsonl:data.jsonl,question=prompt,answer=target`. Answers are checked with math-verify, and a
non-mathematical answer ("Paris") also by exact match after trimming and case-folding.
"""

from __future__ import annotations

from grpolab.errors import TaskError
from grpolab.rewards.math import answer_span, math_correctness
from grpolab.tasks.gsm8k import MathAnswerTask


class JsonlTask(MathAnswerTask):
    name = "jsonl"

    def __init__(self, spec: str):
        path, *options = spec.split(",")
        if not path:
            raise TaskError("task jsonl needs a path: task=jsonl:PATH[,question=FIELD][,answer=FIELD]")
        names = {"question": "question", "answer": "answer"}
        for option in options:
            key, _, value = option.partition("=")
            if key not in names or not value:
                raise TaskError(f"task jsonl: option {option!r} is not question=FIELD or answer=FIELD")
            names[key] = value
        super().__init__(path)
        self.question_field, self.answer_field = names["question"], names["answer"]
        self.fields = (self.question_field, self.answer_field)

    def question(self, example: dict) -> str:
        return str(example[self.question_field])

    def reference(self, example: dict) -> str:
        return str(example[self.answer_field])

    def correctness(self, completion: str, example: dict) -> float:
        span = answer_span(completion)
        if span is not None and span.strip().casefold() == self.reference(example).strip().casefold():
            return 1.0
        return math_correctness(completion, self.reference(example))

    def task_rewards(self):
        return {"correctness": self.correctness}

    def is_correct(self, completion: str, example: dict) -> bool:
        return self.correctness(completion, example) == 1.0
