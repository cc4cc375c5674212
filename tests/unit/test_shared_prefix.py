"""Shared-prefix scoring: each distinct prompt runs through the model once and its keys / values are
gathered to its completions. Log-probs and gradients must equal the plain pass over repeated prompts,
for every architecture the engine supports, and the trainer's micro-batches must keep a prompt's rows
together."""

from dataclasses import replace

import pytest
import torch

from grpolab.model import scoring as lp
from grpolab.rollout.batch import RolloutBatch
from grpolab.training.experience import batch_logprobs
from grpolab.training.micro_batches import micro_batches
from tests.unit.test_engine import tiny_model


def logprobs_and_grads(
    model, prompt_ids, prompt_mask, prompt_index, completion_ids, completion_mask, weights, temperature, shared
):
    """Completion log-probs [B, T] and the parameter gradients of sum(logprobs * weights): with the N distinct
    prompts shared by their rows (`prompt_index`), or with each row's prompt repeated."""
    model.zero_grad()
    if shared:
        args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        got, _ = lp.completion_logprobs(model, *args, temperature=temperature, prompt_index=prompt_index)
    else:
        args = (prompt_ids[prompt_index], prompt_mask[prompt_index], completion_ids, completion_mask)
        got, _ = lp.completion_logprobs(model, *args, temperature=temperature)
    (got * weights * completion_mask).sum().backward()
    return got.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_shared_prefix_equals_repeated_prompts(arch):
    torch.manual_seed(0)
    model = tiny_model(arch).float()
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt_ids = torch.randint(1, vocab, (2, 5))
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # left-padded, different lengths
    prompt_index = torch.tensor([1, 0, 0, 1, 0])  # rows continue prompts 1, 0, 0, 1, 0
    completion_ids = torch.randint(1, vocab, (5, 4))
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    weights = torch.randn(5, 4)
    inputs = (prompt_ids, prompt_mask, prompt_index, completion_ids, completion_mask, weights)

    expected, expected_grads = logprobs_and_grads(model, *inputs, temperature=0.8, shared=False)
    got, grads = logprobs_and_grads(model, *inputs, temperature=0.8, shared=True)
    mask = completion_mask.bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)
    assert (got[~mask] == 0).all()
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-5), name


def rollout(lengths: list[int], group_size: int) -> RolloutBatch:
    rows, width = len(lengths), max(lengths)
    prompt_ids = torch.arange(rows // group_size).repeat_interleave(group_size)[:, None].repeat(1, 3)
    return RolloutBatch(
        examples=[{}] * (rows // group_size),
        completions=[None] * rows,
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones(rows, 3, dtype=torch.long),
        completion_ids=torch.zeros(rows, width, dtype=torch.long),
        completion_mask=torch.tensor([[1] * n + [0] * (width - n) for n in lengths]),
        sampling_logprobs=torch.zeros(rows, width),
        rewards=torch.zeros(rows // group_size, group_size),
    )


def test_micro_batches_keep_a_prompts_rows_together():
    batch = rollout([5, 1, 2, 2, 9, 3, 1, 1, 4, 4, 4, 4], group_size=4)  # prompts 0, 1, 2: longest 5, 9, 4
    parts = list(micro_batches(batch, 4, share_prompts=True))
    assert [sorted(part.rows.tolist()) for part in parts] == [[8, 9, 10, 11], [0, 1, 2, 3], [4, 5, 6, 7]]
    rows, p_ids, c_ids, index = parts[1].rows, parts[1].prompt_ids, parts[1].completion_ids, parts[1].prompt_index
    assert p_ids.shape[0] == 1 and (index == 0).all()
    assert c_ids.shape[1] == 5  # padded to its own prompt's longest completion only
    assert sorted(rows.tolist()) == sorted(set(rows.tolist()))
    spread = list(micro_batches(batch, 6, share_prompts=True))  # a micro-batch of 6 spans two prompts
    rows, p_ids, index = spread[0].rows, spread[0].prompt_ids, spread[0].prompt_index
    assert p_ids.shape[0] == 2 and torch.equal(p_ids[index, 0], batch.prompt_ids[rows, 0])
    covered = sorted(r for part in spread for r in part.rows.tolist())
    assert covered == list(range(12))


def test_token_budget_micro_batches_cover_every_row_within_the_budget():
    batch = rollout([5, 1, 2, 2, 9, 3, 1, 1, 4, 4, 4, 4], group_size=4)  # prompts of 3 tokens
    for share in (False, True):
        parts = list(micro_batches(batch, 2, share_prompts=share, max_tokens=24))
        covered = sorted(r for part in parts for r in part.rows.tolist())
        assert covered == list(range(12))
        for part in parts:
            assert len(part.rows) == 1 or part.prompt_ids.numel() + part.completion_ids.numel() <= 24
        assert any(len(part.rows) > 2 for part in parts)  # short rows: more than micro_batch_size together
    one_each = list(micro_batches(batch, 2, max_tokens=1))  # a budget below one row still makes progress
    assert len(one_each) == 12


@pytest.mark.parametrize("share", [True, False])
def test_scoring_batch_size_does_not_change_the_log_probs(share):
    """`train.scoring_batch_size` only regroups the no-gradient passes (reference / old policy)."""
    torch.manual_seed(0)
    model = tiny_model("llama").float()
    batch = rollout([4, 2, 3, 1, 4, 4], group_size=3)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = replace(batch, completion_ids=torch.randint(1, vocab, batch.completion_ids.shape))
    cpu = torch.device("cpu")
    outs = [batch_logprobs(model, batch, size, 0.9, False, cpu, share_prompts=share) for size in (1, 3, 64)]
    mask = batch.completion_mask.bool()
    for out in outs[1:]:
        assert torch.allclose(out[mask], outs[0][mask], atol=1e-5)
        assert (out[~mask] == 0).all()
