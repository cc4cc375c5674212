"""Gradient accumulation in the trainer's optimisation pass: micro-batch size 1 gives the same gradient as
the whole rollout in one micro-batch, for every aggregation (tiny-random, fp32)."""

import pytest
import torch

from grpolab.config import load_config
from grpolab.engine.base import SamplingParams
from grpolab.engine.hf import HFEngine
from grpolab.model.loading import ensure_tiny_random, load_model, load_tokenizer, sparse_embedding_gradients
from grpolab.rollout.batch import collect_rollout
from grpolab.tasks import get_task
from grpolab.training.experience import ShapedBatch
from grpolab.training.optimisation import optimisation_pass


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


def test_sparse_tied_embedding_gradient_is_the_dense_one(rollout):
    """The tied embedding's sparse gradient (grpolab/models.py) sums to the dense one, and `.grad` ends dense."""
    policy, batch = rollout
    rows = batch.completion_mask.shape[0]
    shaped = ShapedBatch(batch.completion_mask, torch.linspace(-1, 1, rows).unsqueeze(1), None, None, {})
    embedding = policy.get_input_embeddings()
    assert policy.get_output_embeddings().weight is embedding.weight  # tiny-random ties them
    dense, dense_loss = gradient(policy, batch, shaped, ["train.micro_batch_size=2"])
    try:
        assert sparse_embedding_gradients(policy)
        sparse, sparse_loss = gradient(policy, batch, shaped, ["train.micro_batch_size=2"])
        assert not any(p.grad.is_sparse for p in policy.parameters() if p.grad is not None)
    finally:
        embedding.sparse = False
    assert sparse_loss == dense_loss
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-7)


def test_untied_or_frozen_embeddings_stay_dense():
    path = str(ensure_tiny_random())
    model = load_model(path)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert not sparse_embedding_gradients(model)
    untied = load_model(path)
    untied.get_output_embeddings().weight = torch.nn.Parameter(untied.get_input_embeddings().weight.clone())
    assert not sparse_embedding_gradients(untied)
    assert not untied.get_input_embeddings().sparse
