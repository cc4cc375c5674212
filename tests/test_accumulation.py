"""Gradient accumulation in the trainer's optimisation pass: micro-batch size 1 gives the same gradient as
the whole rollout in one micro-batch, for every aggregation (tiny-random, fp32)."""

import pytest
import torch

from grpolab.batch_shaping import ShapedBatch
from grpolab.config import load_config
from grpolab.engine.base import SamplingParams
from grpolab.engine.hf import HFEngine
from grpolab.models import ensure_tiny_random, load_model, load_tokenizer
from grpolab.rollout import collect_rollout
from grpolab.tasks import get_task
from grpolab.trainer import optimisation_pass


@pytest.fixture(scope="module")
def rollout():
    path = str(ensure_tiny_random())
    tokenizer, policy = load_tokenizer(path), load_model(path)
    task = get_task("arithmetic")
    examples = [next(task.train_stream(0)) for _ in range(2)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=0)
    batch = collect_rollout(HFEngine(policy, tokenizer), tokenizer, task, examples, 3, params, {"correctness": 1.0})
    return policy, batch


def gradient(policy, batch, shaped, overrides):
    config = load_config(None, ["train.precision=fp32", "rollout.max_new_tokens=6", *overrides])
    policy.zero_grad(set_to_none=True)
    stats, _ = optimisation_pass(policy, batch, shaped, config, False, torch.device("cpu"))
    return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]), stats["loss"]


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_micro_batch_size_does_not_change_the_gradient(rollout, aggregation):
    policy, batch = rollout
    rows, width = batch.completion_mask.shape
    advantages = torch.linspace(-1, 1, rows).unsqueeze(1)  # [B, 1]
    ref = batch.sampling_logprobs - 0.1  # any fixed reference log-probs
    shaped = ShapedBatch(batch.completion_mask, advantages, None, ref, {})
    knobs = [f"grpo.aggregation={aggregation}", "grpo.beta=0.1", "grpo.entropy_coef=0.01"]
    whole, whole_loss = gradient(policy, batch, shaped, [*knobs, f"train.micro_batch_size={rows}"])
    single, single_loss = gradient(policy, batch, shaped, [*knobs, "train.micro_batch_size=1"])
    assert single_loss == pytest.approx(whole_loss, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(single, whole, rtol=1e-4, atol=1e-6)
