"""Advantage estimators against hand-computed values, and their properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpolab.algorithms.advantages import (
    STD_EPS,
    compute_advantages,
    group_advantages,
    process_advantages,
    process_batch_advantages,
    rft_coefficients,
    rloo_advantages,
    token_index_of_char,
)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
# group 0: mean 0.5, sample std sqrt(4 * 0.25 / 3) = sqrt(1/3)
STD0 = math.sqrt(1 / 3)


def test_group_zscore_by_hand():
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]) / torch.tensor([[STD0 + STD_EPS], [1.0]])
    torch.testing.assert_close(group_advantages(REWARDS, "group"), expected)


def test_batch_std_keeps_group_mean():
    batch_std = REWARDS.flatten().std().item()  # std over all 8 rewards
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]) / (batch_std + STD_EPS)
    torch.testing.assert_close(group_advantages(REWARDS, "batch"), expected)


def test_none_is_centred_reward():
    torch.testing.assert_close(group_advantages(REWARDS, "none"), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))


def test_rloo_by_hand():
    # r_0 = 1, others 0, 0, 1: mean of others 1/3 -> 2/3
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0.0] * 4])
    torch.testing.assert_close(rloo_advantages(REWARDS), expected)


def test_unscored_members_get_zero_and_leave_the_statistics():
    rewards = torch.tensor([[1.0, 0.0, 5.0]])
    scored = torch.tensor([[True, True, False]])  # the 5.0 is a placeholder: no reward function applied
    # scored members 1, 0: mean 0.5, sample std sqrt(0.5)
    expected = torch.tensor([[0.5, -0.5, 0.0]]) / (math.sqrt(0.5) + STD_EPS)
    torch.testing.assert_close(group_advantages(rewards, "group", scored=scored), expected)
    torch.testing.assert_close(rloo_advantages(rewards, scored), torch.tensor([[1.0, -1.0, 0.0]]))


def test_dispatch_and_unknown():
    torch.testing.assert_close(compute_advantages(REWARDS, "rloo"), rloo_advantages(REWARDS))
    with pytest.raises(ValueError):
        compute_advantages(REWARDS, "median")


def test_rft_coefficients():
    torch.testing.assert_close(rft_coefficients([True, False, True]), torch.tensor([1.0, 0.0, 1.0]))


group_rewards = st.lists(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=8), min_size=1, max_size=4
).filter(lambda rows: len({len(r) for r in rows}) == 1)


@settings(max_examples=60, deadline=None)
@given(group_rewards, st.sampled_from(["group", "batch", "none", "rloo"]))
def test_advantages_sum_to_zero_per_group(rows, estimator):
    rewards = torch.tensor(rows, dtype=torch.float64)
    advantages = compute_advantages(rewards, estimator)
    scale = 1 + rewards.abs().max().item() / STD_EPS
    assert advantages.sum(dim=1).abs().max().item() <= 1e-9 * scale


@settings(max_examples=40, deadline=None)
@given(group_rewards)
def test_rloo_is_scaled_centred_reward(rows):
    rewards = torch.tensor(rows, dtype=torch.float64)
    size = rewards.shape[1]
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    torch.testing.assert_close(rloo_advantages(rewards), centred * size / (size - 1))


def test_process_advantages_by_hand():
    # completion 0: steps ending at tokens 1 and 3 with rewards 1, 0; completion 1: one step at token 2, reward 1
    # all step rewards {1, 0, 1}: mean 2/3, sample std sqrt(1/3)
    std = math.sqrt(1 / 3) + STD_EPS
    high, low = (1 - 2 / 3) / std, (0 - 2 / 3) / std
    expected = torch.tensor(
        [
            [high + low, high + low, low, low, 0.0],  # t <= 1 sums both steps, t in 2..3 only the second
            [high, high, high, 0.0, 0.0],
        ]
    )
    advantages = process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], length=5)
    torch.testing.assert_close(advantages, expected)


def test_process_advantages_equal_rewards_and_groups():
    torch.testing.assert_close(process_advantages([[1.0], [1.0]], [[0], [1]], 3), torch.zeros(2, 3))
    batch = process_batch_advantages([[1.0], [0.0], [1.0], [1.0]], [[0], [0], [0], [0]], group_size=2, length=2)
    assert batch.shape == (4, 2)
    assert batch[2:].abs().sum() == 0  # second group: all step rewards equal
    assert batch[0, 0] > 0 > batch[1, 0]


def test_token_index_of_char():
    ends = [2, 5, 5, 9]  # token 2 decodes to nothing new (e.g. half of a multi-byte character)
    assert [token_index_of_char(ends, c) for c in (1, 2, 3, 5, 6, 9, 20)] == [0, 0, 1, 1, 3, 3, 3]
