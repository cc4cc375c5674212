"""Ratios, clipped surrogate, KL estimators and aggregation against hand-computed values, and the properties
the spec asks for: exact gradient accumulation, k3 >= 0, and the on-policy gradient with mu = 1."""

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpolab.algorithms.losses import (
    aggregate,
    clipped_surrogate,
    kl_k1,
    kl_k2,
    kl_k3,
    rollout_weights,
    sequence_ratio,
    token_ratio,
)
from grpolab.algorithms.objective import Normalisers, grpo_loss

LN2 = math.log(2)


def knobs(**changes):
    base = dict(
        ratio_level="token",
        eps_low=0.2,
        eps_high=0.2,
        beta=0.0,
        kl_estimator="k3",
        kl_in_reward=False,
        aggregation="sequence",
        entropy_coef=0.0,
        rollout_correction="none",
        rollout_cap=2.0,
    )
    return SimpleNamespace(**{**base, **changes})


def test_token_ratio_by_hand():
    torch.testing.assert_close(token_ratio(torch.tensor([[0.0, LN2]]), torch.zeros(1, 2)), torch.tensor([[1.0, 2.0]]))


def test_sequence_ratio_value_and_gradient():
    logprobs = torch.tensor([[LN2, 0.0, 5.0]], requires_grad=True)  # the third token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    ratio = sequence_ratio(logprobs, torch.zeros(1, 3), mask)
    torch.testing.assert_close(ratio.detach(), torch.full((1, 3), math.sqrt(2)))  # exp(ln2 / 2) on every token
    (ratio * mask).sum().backward()
    # d ratio_t / d logp_t = s_i (GSPO: s_i * grad log pi per token), no cross-token terms
    torch.testing.assert_close(logprobs.grad, torch.tensor([[math.sqrt(2), math.sqrt(2), 0.0]]))


@pytest.mark.parametrize(
    "advantage, loss, low, high",
    [
        (1.0, [-0.5, -1.0, -1.28], [False, False, False], [False, False, True]),
        (-1.0, [0.8, 1.0, 1.5], [True, False, False], [False, False, False]),
    ],
)
def test_clipped_surrogate_by_hand(advantage, loss, low, high):
    ratio = torch.tensor([[0.5, 1.0, 1.5]])
    out, clipped_low, clipped_high = clipped_surrogate(ratio, torch.tensor([[advantage]]), 0.2, 0.28)
    torch.testing.assert_close(out, torch.tensor([loss]))
    assert clipped_low.tolist() == [low] and clipped_high.tolist() == [high]


def test_kl_estimators_by_hand():
    logprobs, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    torch.testing.assert_close(kl_k1(logprobs, ref), torch.tensor([LN2]))
    torch.testing.assert_close(kl_k2(logprobs, ref), torch.tensor([0.5 * LN2**2]))
    torch.testing.assert_close(kl_k3(logprobs, ref), torch.tensor([0.5 + LN2 - 1.0]))  # r - log r - 1, r = 1/2


@pytest.mark.parametrize("mode, expected", [("sequence", 3.0), ("token", 2.5), ("constant", 1.0)])
def test_aggregation_by_hand(mode, expected):
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # sequence: (2 + 4) / 2; token: 10 / 4; constant: 10 / (2 * 5) with L_max = 5
    assert aggregate(losses, mask, mode, num_sequences=2, num_tokens=4, max_length=5).item() == pytest.approx(expected)


@settings(max_examples=80, deadline=None)
@given(st.floats(-20, 20), st.floats(-20, 20))
def test_k3_is_nonnegative_and_zero_at_equality(logprob, ref):
    a, b = torch.tensor([logprob], dtype=torch.float64), torch.tensor([ref], dtype=torch.float64)
    assert kl_k3(a, b).item() >= 0
    assert kl_k3(a, a).item() == 0


def random_rollout(seed: int, rows: int, width: int):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).float()  # [B, T]
    logprobs = -torch.rand(rows, width, generator=generator, dtype=torch.float64) * 3
    old = logprobs - 0.3 * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    ref = logprobs - 0.3 * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    advantages = torch.randn(rows, 1, generator=generator, dtype=torch.float64)
    entropy = torch.rand(rows, width, generator=generator, dtype=torch.float64)
    return logprobs, old, ref, advantages, mask.double(), entropy


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(2, 7),
    width=st.integers(1, 6),
    micro=st.integers(1, 7),
    aggregation=st.sampled_from(["sequence", "token", "constant"]),
    ratio_level=st.sampled_from(["token", "sequence"]),
)
def test_micro_batches_sum_to_the_full_batch_loss_and_gradient(seed, rows, width, micro, aggregation, ratio_level):
    logprobs, old, ref, advantages, mask, entropy = random_rollout(seed, rows, width)
    grpo = knobs(aggregation=aggregation, ratio_level=ratio_level, beta=0.05, entropy_coef=0.01)
    normalisers = Normalisers(rows, float(mask.sum()), width + 2)
    full_input = logprobs.clone().requires_grad_(True)
    full, _ = grpo_loss(full_input, old, ref, advantages, mask, grpo, normalisers, entropy)
    full.backward()
    parts_input = logprobs.clone().requires_grad_(True)
    total = 0.0
    for start in range(0, rows, micro):
        rows_ = slice(start, start + micro)
        part, _ = grpo_loss(
            parts_input[rows_], old[rows_], ref[rows_], advantages[rows_], mask[rows_], grpo, normalisers,
            entropy[rows_],
        )  # fmt: skip
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(parts_input.grad, full_input.grad)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    beta=st.sampled_from([0.0, 0.04, 1.0]),
    aggregation=st.sampled_from(["sequence", "token", "constant"]),
    kl_estimator=st.sampled_from(["k1", "k2", "k3"]),
)
def test_on_policy_gradient_is_minus_advantage_plus_kl(seed, beta, aggregation, kl_estimator):
    """mu = 1: old = logp.detach(), so the ratio is exactly 1 and d loss / d logp_t = w_t (-A + beta dKL/dlogp)."""
    logprobs, _, ref, advantages, mask, _ = random_rollout(seed, 4, 5)
    grpo = knobs(aggregation=aggregation, beta=beta, kl_estimator=kl_estimator)
    normalisers = Normalisers(4, float(mask.sum()), 5)
    leaf = logprobs.clone().requires_grad_(True)
    assert torch.equal(token_ratio(leaf, leaf.detach()), torch.ones_like(leaf))
    loss, stats = grpo_loss(leaf, leaf.detach(), ref, advantages, mask, grpo, normalisers)
    loss.backward()
    assert stats["clip_low_frac"] == stats["clip_high_frac"] == 0.0
    kl_gradient = {
        "k1": torch.ones_like(leaf),
        "k2": logprobs - ref,
        "k3": 1 - torch.exp(ref - logprobs),
    }[kl_estimator]
    weight = {  # d aggregate / d L_{i,t}
        "sequence": mask / mask.sum(1, keepdim=True) / 4,
        "token": mask / mask.sum(),
        "constant": mask / (4 * 5),
    }[aggregation]
    torch.testing.assert_close(leaf.grad, weight * (-advantages + beta * kl_gradient))


def test_kl_in_reward_leaves_the_loss_but_is_reported():
    logprobs, old, ref, advantages, mask, _ = random_rollout(0, 3, 4)
    normalisers = Normalisers(3, float(mask.sum()), 4)
    in_loss, stats_loss = grpo_loss(logprobs, old, ref, advantages, mask, knobs(beta=0.5), normalisers)
    in_reward, stats_reward = grpo_loss(
        logprobs, old, ref, advantages, mask, knobs(beta=0.5, kl_in_reward=True), normalisers
    )
    no_kl, _ = grpo_loss(logprobs, old, None, advantages, mask, knobs(), normalisers)
    assert in_reward.item() == pytest.approx(no_kl.item())
    assert in_loss.item() > in_reward.item()  # k3 > 0 off equality
    assert stats_loss["kl"] == pytest.approx(stats_reward["kl"]) and stats_loss["kl"] > 0


def test_entropy_bonus_is_a_token_mean():
    logprobs, old, _, advantages, mask, entropy = random_rollout(1, 3, 4)
    normalisers = Normalisers(3, float(mask.sum()), 4)
    base, _ = grpo_loss(logprobs, old, None, advantages, mask, knobs(), normalisers, entropy)
    bonus, _ = grpo_loss(logprobs, old, None, advantages, mask, knobs(entropy_coef=0.1), normalisers, entropy)
    assert (base - bonus).item() == pytest.approx(0.1 * ((entropy * mask).sum() / mask.sum()).item())


def test_rollout_weights_by_hand():
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    sampling = torch.tensor([[-1.5, -1.0, 0.0]])  # the third token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    token = rollout_weights(old, sampling, mask, "token", cap=1.5)
    torch.testing.assert_close(token, torch.tensor([[1.5, math.exp(-1.0), 1.0]]))  # e^0.5 = 1.65 capped at 1.5
    sequence = rollout_weights(old, sampling, mask, "sequence", cap=2.0)
    torch.testing.assert_close(sequence, torch.tensor([[math.exp(-0.5)]]))  # e^(0.5 - 1), padding left out
    assert not rollout_weights(old.requires_grad_(True), sampling, mask, "token", 2.0).requires_grad


def test_masked_rollout_weights_by_hand():
    """MIS: a token (or sequence) whose ratio leaves [1/cap, cap] gets weight 0; the others keep their ratio."""
    old = torch.tensor([[-1.0, -2.0, -3.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    sampling = torch.tensor([[-1.5, -1.0, -3.0, 0.0], [-1.2, -1.0, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    token = rollout_weights(old, sampling, mask, "token_mask", cap=2.0)
    # row 0: e^0.5 = 1.65 kept, e^-1 = 0.37 < 1/2 dropped, e^0 = 1 kept; row 1: e^0.2, 1, e^-0.5 = 0.61 kept
    expected = torch.tensor([[math.exp(0.5), 0.0, 1.0, 1.0], [math.exp(0.2), 1.0, math.exp(-0.5), 1.0]])
    torch.testing.assert_close(token, expected)
    sequence = rollout_weights(old, sampling, mask, "sequence_mask", cap=2.0)
    # row 0: e^(0.5 - 1 + 0) = e^-0.5 = 0.61 kept; row 1: e^(0.2 + 0 - 0.5) = e^-0.3 = 0.74 kept
    torch.testing.assert_close(sequence, torch.tensor([[math.exp(-0.5)], [math.exp(-0.3)]]))
    tight = rollout_weights(old, sampling, mask, "sequence_mask", cap=1.5)  # 1/1.5 = 0.67: row 0 dropped
    torch.testing.assert_close(tight, torch.tensor([[0.0], [math.exp(-0.3)]]))


def test_rollout_correction_weights_each_token_loss():
    """On-policy (mu = 1): the gradient on token t is w_t times the uncorrected one, w_t = min(pi_old / pi_sampling,
    cap); a sampling distribution equal to pi_old changes nothing."""
    logprobs, _, ref, advantages, mask, _ = random_rollout(3, 3, 4)
    normalisers = Normalisers(3, float(mask.sum()), 4)
    sampling = logprobs + 0.3 * torch.randn(logprobs.shape, generator=torch.Generator().manual_seed(5))
    gradients, losses = {}, {}
    for name, grpo, sampled in [
        ("plain", knobs(beta=0.04), None),
        ("same", knobs(beta=0.04, rollout_correction="token"), logprobs),
        ("token", knobs(beta=0.04, rollout_correction="token", rollout_cap=1.2), sampling),
    ]:
        leaf = logprobs.clone().requires_grad_(True)
        losses[name], stats = grpo_loss(leaf, leaf.detach(), ref, advantages, mask, grpo, normalisers, None, sampled)
        losses[name].backward()
        gradients[name] = leaf.grad
    torch.testing.assert_close(gradients["same"], gradients["plain"])
    weights = torch.exp(logprobs - sampling).clamp(max=1.2)
    torch.testing.assert_close(gradients["token"], weights * gradients["plain"])
    assert 0 < stats["rollout_weight_capped_frac"] < 1
