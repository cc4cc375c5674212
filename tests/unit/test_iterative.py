"""Iterative RL (DeepSeekMath Algorithm 1): reward-model retraining with replay of historical samples."""

import random

from grpolab.tasks.base import Task
from grpolab.training.iterative import IterativeRL, replay_sample


def test_replay_sample_takes_a_fraction_without_replacement():
    history = [{"i": i} for i in range(50)]
    replay = replay_sample(history, 0.1, random.Random(0))
    assert len(replay) == 5 and len({r["i"] for r in replay}) == 5
    assert replay_sample([], 0.1, random.Random(0)) == []


class CountingRewardModel:
    """A trainable reward: callable like every reward, plus `update`."""

    def __init__(self):
        self.updates = []

    def __call__(self, completion, example):
        return 0.0

    def update(self, samples):
        self.updates.append(list(samples))


class TaskWithRewardModel(Task):
    def __init__(self):
        self.model = CountingRewardModel()

    def reward_functions(self):
        return {"rm": self.model, "rule": lambda completion, example: 1.0}


class FakeBatch:
    def __init__(self, tag: str, rows: int = 4):
        self.group_size = 2
        self.examples = [{"q": tag}] * (rows // 2)
        self.completions = [type("C", (), {"text": f"{tag}{i}"}) for i in range(rows)]
        self.reward_parts = {"rule": [1.0] * rows}
        self.correct = [True] * rows


def test_end_iteration_retrains_on_new_samples_plus_replay():
    task = TaskWithRewardModel()
    loop = IterativeRL(task, iteration_steps=2, replay_fraction=0.5, seed=0)
    assert [loop.ends_iteration(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    loop.record(FakeBatch("a"))
    loop.record(FakeBatch("b"))
    assert loop.end_iteration() == {"rm_new_samples": 8, "rm_replay_samples": 0, "rm_retrained": 1}
    loop.record(FakeBatch("c"))
    stats = loop.end_iteration()
    assert stats == {"rm_new_samples": 4, "rm_replay_samples": 4, "rm_retrained": 1}  # half of 8 old samples
    second = task.model.updates[1]
    assert [s["completion"] for s in second[:4]] == ["c0", "c1", "c2", "c3"]
    assert all(s["completion"][0] in "ab" for s in second[4:])
    assert second[0]["rewards"] == {"rule": 1.0} and second[0]["correct"] is True


def test_no_reward_model_keeps_no_samples():
    class RuleOnly(Task):
        def reward_functions(self):
            return {"rule": lambda completion, example: 1.0}

    loop = IterativeRL(RuleOnly(), iteration_steps=1, replay_fraction=0.1, seed=0)
    loop.record(FakeBatch("a"))
    assert loop.new == [] and loop.end_iteration()["rm_retrained"] == 0
