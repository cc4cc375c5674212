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
    #: the spec after `name:`: the source, then KEY=VALUE options (`grpolab.tasks.hf.HFTask` adds its own)
    source_form = "PATH"
    option_forms = ("question=FIELD", "answer=FIELD")

    def __init__(self, spec: str):
        path, *given = spec.split(",")
        if not path:
            usage = "".join(f"[,{form}]" for form in self.option_forms)
            raise TaskError(f"task {self.name} needs a path: task={self.name}:{self.source_form}{usage}")
        #: the options given, None where not given
        self.options: dict[str, str | None] = {form.partition("=")[0]: None for form in self.option_forms}
        for option in given:
            key, _, value = option.partition("=")
            if key not in self.options or not value:
                allowed = ", ".join(self.option_forms[:-1]) + " or " + self.option_forms[-1]
                raise TaskError(f"task {self.name}: option {option!r} is not {allowed}")
            self.options[key] = value
        super().__init__(path)
        self.question_field = self.options["question"] or "question"
        self.answer_field = self.options["answer"] or "answer"
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
