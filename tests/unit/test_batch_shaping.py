"""DAPO batch shaping and the PPO-style KL in the reward: pure terms by hand, and the batch operations."""

import torch

from grpolab.algorithms.shaping import (
    kl_penalised_rewards,
    overlong_loss_mask,
    zero_variance_groups,
)
from grpolab.engine.base import Completion
from grpolab.engine.hf import left_pad
from grpolab.rollout import sampling
from grpolab.rollout.batch import RolloutBatch, right_pad
from grpolab.training import experience


def test_zero_variance_groups_and_overlong_mask():
    assert zero_variance_groups(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])).tolist() == [True, False, True]
    mask = torch.ones(3, 2, dtype=torch.long)
    assert overlong_loss_mask(mask, torch.tensor([False, True, False])).tolist() == [[1, 1], [0, 0], [1, 1]]


def test_kl_penalised_rewards_by_hand():
    rewards = torch.tensor([[1.0, 0.0]])
    kl = torch.tensor([[0.5, 0.25, 9.0], [0.1, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # 9.0 sits on padding
    shaped, sequence_kl = kl_penalised_rewards(rewards, kl, mask, beta=0.1)
    torch.testing.assert_close(sequence_kl, torch.tensor([[0.75, 0.1]]))
    torch.testing.assert_close(shaped, torch.tensor([[1.0 - 0.075, -0.01]]))


def make_batch(groups: list[list[tuple[list[int], float, str]]], prompt_lengths: list[int]) -> RolloutBatch:
    """groups[n][j] = (completion tokens, reward, finish reason); prompt n is `prompt_lengths[n]` tokens."""
    rows = [(tokens, why) for group in groups for tokens, _, why in group]
    completions = [Completion(t, [-0.1 * k for k in range(len(t))], why, text=str(t)) for t, why in rows]
    size = len(groups[0])
    prompts = [list(range(5, 5 + prompt_lengths[n])) for n in range(len(groups)) for _ in range(size)]
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    return RolloutBatch(
        examples=[{"n": n} for n in range(len(groups))],
        completions=completions,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=right_pad([c.token_ids for c in completions], 0, torch.long),
        completion_mask=right_pad([[1] * len(c.token_ids) for c in completions], 0, torch.long),
        sampling_logprobs=right_pad([c.logprobs for c in completions], 0.0, torch.float32),
        rewards=torch.tensor([[r for _, r, _ in g] for g in groups]),
        reward_parts={"correctness": [r for g in groups for _, r, _ in g]},
        correct=[r > 0 for g in groups for _, r, _ in g],
    )


def test_select_and_concat_rebuild_the_same_rows():
    batch = make_batch(
        [[([1, 2], 1.0, "stop"), ([3], 0.0, "stop")], [([4, 5, 6, 7], 1.0, "length"), ([8], 1.0, "stop")]],
        prompt_lengths=[2, 4],
    )
    first = sampling.select_groups(batch, [0])
    assert first.prompt_ids.shape == (2, 2) and first.completion_ids.shape == (2, 2)  # padding trimmed
    second = sampling.select_groups(batch, [1])
    joined = sampling.concat_rollouts([first, second], pad_id=0)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_logprobs", "rewards"):
        assert torch.equal(getattr(joined, name), getattr(batch, name)), name
    assert joined.reward_parts == batch.reward_parts and joined.correct == batch.correct


def test_loss_mask_filters_truncated_rows_only_when_asked():
    batch = make_batch([[([1, 2], 1.0, "stop"), ([3, 4], 0.0, "length")]], prompt_lengths=[1])
    assert experience.loss_mask(batch, False).tolist() == [[1, 1], [1, 1]]
    assert experience.loss_mask(batch, True).tolist() == [[1, 1], [0, 0]]


class FakeRollouts:
    """generate(examples) returns groups whose rewards are given per call, to drive dynamic sampling."""

    def __init__(self, rewards_per_call):
        self.rewards_per_call = list(rewards_per_call)
        self.asked = []

    def generate(self, examples):
        rewards = self.rewards_per_call.pop(0)
        assert len(rewards) == len(examples)
        self.asked.append(len(examples))
        return make_batch([[([7], r, "stop") for r in group] for group in rewards], [1] * len(examples))


def test_dynamic_sampling_fills_the_batch():
    fake = FakeRollouts([[[1, 1], [0, 1], [0, 0]], [[1, 0], [1, 1]], [[0, 1]]])
    batch, stats = sampling.dynamic_sampling(fake.generate, lambda n: list(range(n)), 3, 5, 0)
    assert fake.asked == [3, 2, 1]  # each round asks for the missing groups only
    assert batch.rewards.tolist() == [[0, 1], [1, 0], [0, 1]]
    assert stats == {"groups_dropped": 3, "sampling_rounds": 3, "zero_std_groups_frac": 0.5}


def test_dynamic_sampling_stops_at_the_retry_limit():
    fake = FakeRollouts([[[1, 1], [0, 1]], [[0, 0]], [[1, 1]], [[1, 0]]])
    batch, stats = sampling.dynamic_sampling(fake.generate, lambda n: list(range(n)), 2, 3, 0)
    assert fake.asked == [2, 1, 1]  # three rounds, not four
    assert batch.rewards.tolist() == [[0, 1]]  # trains on the part-full batch
    assert stats["groups_dropped"] == 3 and stats["sampling_rounds"] == 3


def test_dynamic_sampling_without_any_signal_keeps_the_last_round():
    fake = FakeRollouts([[[1, 1]], [[0, 0]]])
    batch, stats = sampling.dynamic_sampling(fake.generate, lambda n: list(range(n)), 1, 2, 0)
    assert batch.rewards.tolist() == [[0, 0]] and stats["zero_std_groups_frac"] == 1.0


def test_scored_mask_marks_rows_no_reward_applied_to():
    batch = make_batch([[([1], 1.0, "stop"), ([2], 0.0, "stop")]], prompt_lengths=[1])
    batch.reward_parts = {"a": [None, 1.0], "b": [None, None]}
    assert experience.scored_mask(batch).tolist() == [[False, True]]
