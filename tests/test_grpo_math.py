"""Hand-computed checks of the GRPO maths the foundation relies on (ALGORITHMS.md sections 1-2)."""

import math

import pytest
import torch

from grpolab.algorithms.advantages import compute_advantages, group_advantages, rloo_advantages
from grpolab.algorithms.losses import aggregate, clipped_surrogate, kl_k1, kl_k2, kl_k3, token_ratio


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # group 1: mean 0.5, sample std sqrt(1/3) = 0.57735
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    adv = group_advantages(rewards, "group")
    assert adv[0].tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # equal rewards: no signal


def test_advantage_scales():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert group_advantages(rewards, "none").tolist() == [[0.5, -0.5], [1.0, -1.0]]
    batch_std = torch.tensor([1.0, 0.0, 3.0, 1.0]).std().item()  # 1.2910
    assert group_advantages(rewards, "batch")[1, 0].item() == pytest.approx(1.0 / (batch_std + 1e-4))
    # RLOO: r_i - mean of the others
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    assert rloo_advantages(rewards).tolist()[0] == pytest.approx([1.0, -0.5, -0.5])
    assert compute_advantages(rewards, "rloo").tolist() == rloo_advantages(rewards).tolist()


def test_clipped_surrogate_hand_computed():
    ratio = torch.tensor([[0.5, 1.0, 1.5]])
    loss, low, high = clipped_surrogate(ratio, torch.tensor([[2.0]]), eps_low=0.2, eps_high=0.2)
    # A > 0: min(rho A, clip(rho) A) = [1.0, 2.0, 2.4]
    assert loss.tolist()[0] == pytest.approx([-1.0, -2.0, -2.4])
    assert high.tolist() == [[False, False, True]] and not low.any()
    loss, low, high = clipped_surrogate(ratio, torch.tensor([[-1.0]]), eps_low=0.2, eps_high=0.28)
    # A < 0: min(-rho, -clip(rho)) = [-0.8, -1.0, -1.5]
    assert loss.tolist()[0] == pytest.approx([0.8, 1.0, 1.5])
    assert low.tolist() == [[True, False, False]] and not high.any()


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1)  # r = 0.25/0.5
    assert kl_k3(ref, ref).item() == 0.0


def test_aggregations_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "sequence", 2).item() == pytest.approx((1.5 + 3.0) / 2)
    assert aggregate(loss, mask, "token", 2, num_tokens=3).item() == pytest.approx(6.0 / 3)
    assert aggregate(loss, mask, "constant", 2, max_length=2).item() == pytest.approx(6.0 / 4)


@pytest.mark.parametrize("mode", ["sequence", "token", "constant"])
def test_micro_batches_sum_to_full_batch(mode):
    torch.manual_seed(0)
    loss = torch.rand(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    n, tokens, longest = 6, mask.sum().item(), int(mask.sum(1).max())
    full = aggregate(loss, mask, mode, n, tokens, longest)
    parts = sum(aggregate(loss[i : i + 2], mask[i : i + 2], mode, n, tokens, longest) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def test_on_policy_ratio_is_one_and_gradient_is_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ratio = token_ratio(logp, logp.detach())
    assert ratio.tolist() == [[1.0, 1.0]]
    loss, _, _ = clipped_surrogate(ratio, torch.tensor([[0.7]]), 0.2, 0.2)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-0.7, -0.7])
