"""The Task interface: a task owns its data, its prompt, its rewards and its answer checking, so that
RL training and evaluation score answers with exactly the same code.
"""

from __future__ import annotations

from collections.abc import Iterator

from grpolab.rewards import RewardFunction


class Task:
    name: str = "task"
    #: a system message placed before the question; None uses the chat template's own default
    system_prompt: str | None = None
    #: strings that end a completion (e.g. "</answer>" under the R1-Zero template)
    stop_strings: tuple[str, ...] = ()

    def train_stream(self, seed: int) -> Iterator[dict]:
        """An endless, seeded stream of training examples that never contains a held-out example."""
        raise NotImplementedError

    def eval_examples(self, n: int) -> list[dict]:
        """The first n examples of the fixed held-out split."""
        raise NotImplementedError

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

    def reward_functions(self) -> dict[str, RewardFunction]:
        raise NotImplementedError

    def default_weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.reward_functions()}

    def extract_answer(self, completion: str) -> str | None:
        """The normalised final answer (used for majority voting)."""
        raise NotImplementedError

    def is_correct(self, completion: str, example: dict) -> bool:
        raise NotImplementedError
