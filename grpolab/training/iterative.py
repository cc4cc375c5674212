"""Iterative RL (DeepSeekMath Algorithm 1): outer iterations of M GRPO steps. At the end of each
iteration pi_ref <- pi_theta, and every trainable reward model is retrained on the policy's new samples
plus a replay of historical samples (10% in the paper).

A reward model takes part by being a reward function (a callable, as every reward) that also has
`update(samples: list[dict]) -> None`; each sample is {"example", "completion", "rewards", "correct"} with
the values of the other reward functions, so the model can pick its own labels. (choice) The replay is a
random `replay_fraction` of all samples of earlier iterations, drawn without replacement, seeded.
"""

from __future__ import annotations

import random


def rollout_samples(batch) -> list[dict]:
    """The new samples of one rollout batch, as reward models receive them."""
    size = batch.group_size
    return [
        {
            "example": batch.examples[row // size],
            "completion": completion.text,
            "rewards": {name: values[row] for name, values in batch.reward_parts.items()},
            "correct": batch.correct[row],
        }
        for row, completion in enumerate(batch.completions)
    ]


def replay_sample(history: list[dict], fraction: float, rng: random.Random) -> list[dict]:
    """A random `fraction` of the historical samples (rounded to the nearest count)."""
    count = min(len(history), round(fraction * len(history)))
    return rng.sample(history, count)


def trainable_rewards(task) -> dict:
    return {name: f for name, f in task.reward_functions().items() if callable(getattr(f, "update", None))}


class IterativeRL:
    """Collects each iteration's samples and, at the iteration's end, retrains the task's reward models."""

    def __init__(self, task, iteration_steps: int, replay_fraction: float, seed: int):
        self.task = task
        self.iteration_steps = iteration_steps
        self.replay_fraction = replay_fraction
        self.rng = random.Random(seed)
        self.models = trainable_rewards(task)
        self.history: list[dict] = []
        self.new: list[dict] = []

    def record(self, batch) -> None:
        if self.models:  # keep samples only when something will train on them
            self.new.extend(rollout_samples(batch))

    def ends_iteration(self, step: int) -> bool:
        return self.iteration_steps > 0 and step % self.iteration_steps == 0

    def end_iteration(self) -> dict:
        """Retrain every reward model on new + replayed samples; returns counts for the metrics."""
        replay = replay_sample(self.history, self.replay_fraction, self.rng)
        for model in self.models.values():
            model.update(self.new + replay)
        stats = {"rm_new_samples": len(self.new), "rm_replay_samples": len(replay), "rm_retrained": len(self.models)}
        self.history.extend(self.new)
        self.new = []
        return stats
