"""The Task interface: a task owns its data, its prompt, its rewards and its answer checking, so that
RL training and evaluation score answers with exactly the same code.

A task's reward functions are its own (`task_rewards`, e.g. `correctness`) plus the optional ones every
task offers by name with weight 0 (`grpolab.rewards.optional`: `r1_format`, `language`, `overlong`, ...),
configured by the run's `RewardConfig` (`reward.*`), which `get_task` hands to the task, plus the user's own
functions named in `reward.functions` (grpolab/plugins.py).

A task of your own is a subclass named by import path (`task=my_task.py:MyTask`): it implements
`train_stream`, `eval_examples`, `task_rewards`, `extract_answer` and `is_correct` (and may override the rest).
"""

from __future__ import annotations

from collections.abc import Iterator

from grpolab import plugins
from grpolab.config import RewardConfig
from grpolab.rewards import RewardFunction
from grpolab.rewards.optional import optional_rewards


class Task:
    name: str = "task"
    #: a system message placed before the question; None uses the chat template's own default
    system_prompt: str | None = None
    #: the fields a row needs for scoring (besides `completion`), as in the original data set
    fields: tuple[str, ...] = ("question", "answer")
    #: options of the optional rewards; `get_task` sets the run's
    reward_config = None
    #: strings that end a completion (e.g. "</answer>" under the R1-Zero template)
    stop_strings: tuple[str, ...] = ()

    def train_stream(self, seed: int) -> Iterator[dict]:
        """An endless, seeded stream of training examples that never contains a held-out example."""
        raise NotImplementedError

    def eval_examples(self, n: int) -> list[dict]:
        """The first n examples of the fixed held-out split."""
        raise NotImplementedError

    def drop_rows(self, fits) -> dict[str, list[int]]:
        """Drop training rows for which `fits(row)` is False; returns the dropped indices per split
        ("train", "held_out"; held-out rows are reported, not dropped, so `eval.n` keeps its meaning).
        Generated tasks write their own short prompts: nothing to drop."""
        return {"train": [], "held_out": []}

    def question(self, example: dict) -> str:
        return example["question"]

    def messages(self, example: dict) -> list[dict]:
        """The chat prompt for an example."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": self.question(example)}]

    def prompt_text(self, example: dict) -> str | None:
        """A raw text prompt that bypasses the chat template (e.g. the R1-Zero template); None: use `messages`."""
        return None

    def step_rewards(self, completion: str, example: dict) -> list[tuple[int, float]] | None:
        """Process supervision: (end character offset, exclusive; reward) for each step of the completion,
        in order. None: the task has no step rewards (`grpo.advantage=process` then refuses to run)."""
        return None

    def task_rewards(self) -> dict[str, RewardFunction]:
        """The task's own reward functions; weight 1 each unless `default_weights` says otherwise."""
        raise NotImplementedError

    def reward_functions(self) -> dict[str, RewardFunction]:
        """The optional rewards (weight 0 unless asked for), the task's own and the user's `reward.functions`."""
        config = self.reward_config or RewardConfig()
        functions = {**optional_rewards(config, self.question), **self.task_rewards()}
        return {**functions, **plugins.reward_functions(config.functions, set(functions))}

    def default_weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.task_rewards()}

    def added_rewards(self) -> list[str]:
        """The names of the user's `reward.functions` (weight 1 each unless `reward.weights` says otherwise)."""
        return [spec.rpartition(":")[2] for spec in (self.reward_config or RewardConfig()).functions]

    def prepare_row(self, row: dict) -> dict:
        """A row as `grpolab score` reads it, completed from the task's own data where it can be."""
        return row

    def extract_answer(self, completion: str) -> str | None:
        """The normalised final answer (used for majority voting)."""
        raise NotImplementedError

    def is_correct(self, completion: str, example: dict) -> bool:
        raise NotImplementedError
