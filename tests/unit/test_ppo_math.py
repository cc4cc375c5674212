"""PPO's pieces (grpolab/algorithms/ppo.py, ALGORITHMS.md section 7) against hand-computed values."""

import math

import pytest
import torch

from grpolab.algorithms.ppo import clipped_value_loss, explained_variance, gae, token_rewards, whiten


def close(actual, expected):
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6), actual


def test_token_rewards_put_the_outcome_on_the_last_token_and_the_kl_on_every_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 7.0, 7.0]])  # padding of row 1 holds garbage
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards = token_rewards(torch.tensor([1.0, 0.5]), kl, mask, beta=0.5)
    close(rewards, [[-0.05, -0.1, 0.85], [0.3, 0.0, 0.0]])
    close(token_rewards(torch.tensor([2.0]), None, torch.tensor([[1, 1, 0]]), beta=0.5), [[0.0, 2.0, 0.0]])


def test_an_empty_completion_gets_no_reward_anywhere():
    close(token_rewards(torch.tensor([1.0]), None, torch.tensor([[0, 0]]), beta=0.0), [[0.0, 0.0]])


def test_gae_by_hand_gamma_one():
    # delta_2 = 1 - 0.4 = 0.6; delta_1 = 0.4 - 0.2 = 0.2; delta_0 = 0.2 - 0.5 = -0.3
    # A_2 = 0.6; A_1 = 0.2 + 0.5 * 0.6 = 0.5; A_0 = -0.3 + 0.5 * 0.5 = -0.05
    advantages, returns = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]]), torch.ones(1, 3), gamma=1.0, lam=0.5
    )
    close(advantages, [[-0.05, 0.5, 0.6]])
    close(returns, [[0.45, 0.7, 1.0]])


def test_gae_by_hand_with_discount_padding_and_rows_of_different_lengths():
    rewards = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    values = torch.tensor([[1.0, 0.5, 9.0], [0.25, 9.0, 9.0]])  # 9: padding, must not leak in
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # row 0: delta_1 = 2 - 0.5 = 1.5; delta_0 = 0.9 * 0.5 - 1 = -0.55; A_0 = -0.55 + 0.9 * 1.5 = 0.8
    # row 1: A_0 = 3 - 0.25 = 2.75
    close(advantages, [[0.8, 1.5, 0.0], [2.75, 0.0, 0.0]])
    close(returns, [[1.8, 2.0, 0.0], [3.0, 0.0, 0.0]])  # lambda = 1: the discounted return to go


def test_with_lambda_and_gamma_one_and_zero_values_the_advantage_is_the_outcome_minus_the_kl_to_go():
    kl = torch.tensor([[0.1, 0.2, 0.3]])
    rewards = token_rewards(torch.tensor([1.0]), kl, torch.ones(1, 3), beta=0.5)
    advantages, returns = gae(rewards, torch.zeros(1, 3), torch.ones(1, 3), gamma=1.0, lam=1.0)
    # A_t = 1 - 0.5 * (KL_t + ... + KL_2): 1 - 0.3, 1 - 0.25, 1 - 0.15
    close(advantages, [[0.7, 0.75, 0.85]])
    close(returns, [[0.7, 0.75, 0.85]])


def test_whitening_uses_only_the_masked_tokens():
    # mean 2, population variance 2/3: (x - 2) / sqrt(2/3)
    out = whiten(torch.tensor([[1.0, 2.0], [3.0, 100.0]]), torch.tensor([[1, 1], [1, 0]]))
    s = math.sqrt(2 / 3)
    close(out, [[-1 / s, 0.0], [1 / s, 0.0]])


def test_the_value_loss_takes_the_larger_of_the_plain_and_the_clipped_error():
    values = torch.tensor([[1.0, 0.0, 0.6, 5.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    losses, clipped = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # token 0: clip(1.0) = 0.7, errors 1.0 vs 1.69 -> 0.845; token 1: clip(0.0) = 0.3, errors 0 vs 0.09 -> 0.045
    # token 2: inside the range, errors equal, 0.5 * 0.16 = 0.08, the clipping did not act; token 3: padding
    close(losses, [[0.845, 0.045, 0.08, 0.0]])
    assert clipped.tolist() == [[True, True, False, False]]


def test_the_value_loss_gradient_stops_where_the_clipped_term_wins():
    values = torch.tensor([[1.0, 0.6]], requires_grad=True)
    losses, _ = clipped_value_loss(
        values, torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), 0.2
    )
    losses.sum().backward()
    close(values.grad, [[0.0, -0.4]])  # token 0: clipped term (constant in V) wins; token 1: V - R = -0.4


def test_explained_variance():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), returns, mask) == pytest.approx(0.0)
    assert explained_variance(returns - 1, returns, mask) == pytest.approx(1.0)  # a constant offset: no variance
    assert math.isnan(explained_variance(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)))
