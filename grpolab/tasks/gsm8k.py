"""`gsm8k` (grade-school maths word problems) and `math` (competition maths, MATH's `problem` and
`answer` fields). Answers are checked with math-verify (`grpolab.rewards.math.math_correctness`).

Data: `task=gsm8k:PATH` / `task=math:PATH` with PATH a JSONL file or a folder with train.jsonl and
test.jsonl (split rules: `grpolab.tasks.data`); without PATH the hub data set (openai/gsm8k,
HuggingFaceH4/MATH-500), which needs a network and the `datasets` package. GSM8K's `answer` is a worked
solution ending in `#### N`; the reference is N with thousands separators removed.
"""

from __future__ import annotations

from grpolab.rewards.math import answer_span, math_correctness
from grpolab.tasks.data import FileTask

CHECK_SECONDS = 5  # math-verify's limit per parse / comparison
R1_SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process and then give the answer. "
    "The reasoning process and the answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)


class MathAnswerTask(FileTask):
    """Rows with a question and a reference answer, checked by math-verify."""

    system_prompt = R1_SYSTEM_PROMPT

    def reference(self, example: dict) -> str:
        return str(example["answer"])

    def task_rewards(self):
        return {"correctness": lambda completion, example: math_correctness(completion, self.reference(example))}

    def extract_answer(self, completion: str) -> str | None:
        return answer_span(completion)

    def is_correct(self, completion: str, example: dict) -> bool:
        return math_correctness(completion, self.reference(example), CHECK_SECONDS) == 1.0


class GSM8KTask(MathAnswerTask):
    name = "gsm8k"
    fields = ("question", "answer")
    hub = ("openai/gsm8k", "main")

    def reference(self, example: dict) -> str:
        return str(example["answer"]).rsplit("####", 1)[-1].strip().replace(",", "")


class MathTask(MathAnswerTask):
    name = "math"
    fields = ("problem", "answer")
    hub = ("HuggingFaceH4/MATH-500", None)

    def question(self, example: dict) -> str:
        return example["problem"] + "\nPut your final answer within \\boxed{}."
