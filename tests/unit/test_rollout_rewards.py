"""The rollout scores completions through the reward runner, by name and weight from the config."""

from __future__ import annotations

import time

import pytest

from grpolab.config import load_config
from grpolab.engine.base import Completion, SamplingParams
from grpolab.errors import RewardError
from grpolab.model.loading import build_tiny_tokenizer
from grpolab.rewards.runner import RewardRunner, resolve_weights
from grpolab.rollout.batch import collect_rollout
from grpolab.tasks import get_task


class ScriptedEngine:
    """Returns fixed completion texts: the test is about scoring, not sampling."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, n, params):
        completions = [
            Completion(list(range(5 * (i + 1))), [0.0] * 5 * (i + 1), "stop", t) for i, t in enumerate(self.texts)
        ]
        return [completions[:n] for _ in prompts]


def runner_for(overrides):
    config = load_config(None, overrides)
    task = get_task("countdown", config.reward)
    weights = resolve_weights(task, config.reward.weights)
    reward = config.reward
    return task, RewardRunner(
        task.reward_functions(), weights, reward.on_error, reward.timeout_seconds, reward.num_workers
    )


def test_weights_from_the_config_select_and_scale_reward_functions():
    task, runner = runner_for(["reward.weights.r1_format=0.5", "reward.weights.overlong=1", "reward.num_workers=0"])
    example = {"nums": [1, 2, 3], "target": 9}
    texts = ["<think>ok</think> <answer>(1 + 2) * 3</answer>", "<answer>1 + 2 + 3</answer>"]
    batch = collect_rollout(
        ScriptedEngine(texts), build_tiny_tokenizer(), task, [example], 2, SamplingParams(max_new_tokens=10), runner
    )
    assert batch.reward_parts["countdown"] == [1.0, 0.1]
    assert batch.reward_parts["r1_format"] == [1.0, 0.0]
    assert batch.reward_parts["overlong"] == [0.0, -1.0]  # 5 and 10 tokens of 10, buffer 2
    assert batch.rewards.tolist() == [[pytest.approx(1.5), pytest.approx(-0.9)]]
    assert batch.reward_errors == 0


def failing(completion, example):
    raise RuntimeError("boom")


def test_failures_stop_the_rollout_or_are_counted_with_on_error_zero():
    task = get_task("countdown")
    task.task_rewards = lambda: {"countdown": failing}
    example = {"nums": [1, 2, 3], "target": 9}
    engine, tokenizer, params = ScriptedEngine(["a", "b"]), build_tiny_tokenizer(), SamplingParams(max_new_tokens=10)
    with pytest.raises(RewardError, match="reward 'countdown' failed on row 0: RuntimeError: boom"):
        collect_rollout(
            engine, tokenizer, task, [example], 2, params, RewardRunner(task.reward_functions(), {"countdown": 1.0})
        )
    runner = RewardRunner(task.reward_functions(), {"countdown": 1.0}, on_error="zero", num_workers=2)
    with runner:
        batch = collect_rollout(engine, tokenizer, task, [example], 2, params, runner)
    assert batch.reward_errors == 2 and batch.rewards.tolist() == [[0.0, 0.0]]


def failing_slowly_on_a(completion, example):
    if completion == "a":
        time.sleep(0.5)  # row 0 answers after row 1
    raise RuntimeError(f"boom on {completion}")


def test_pooled_failure_names_the_first_row_whichever_worker_answers_first():
    task = get_task("countdown")
    task.task_rewards = lambda: {"countdown": failing_slowly_on_a}
    runner = RewardRunner(task.reward_functions(), {"countdown": 1.0}, num_workers=2)
    with runner, pytest.raises(RewardError, match="failed on row 0: RuntimeError: boom on a"):
        runner.score(["a", "b"], [{"nums": [1, 2, 3], "target": 9}] * 2)
