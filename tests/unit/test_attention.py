"""The trainer's CPU attention (grpolab/attention.py) against transformers' SDPA path: the same log-probs and
gradients in fp32, with left-padded prompts, ragged completions, grouped-query heads and shared prompts."""

import json

import pytest
import torch
from transformers.integrations import sdpa_attention

from grpolab.model import attention
from tests.unit import test_shared_prefix as shared_prefix
from tests.unit.test_engine import tiny_model


def logprobs_and_grads(model, shared: bool):
    torch.manual_seed(1)
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt_ids = torch.randint(1, vocab, (2, 6))
    prompt_mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # padded query rows attend to nothing
    prompt_index = torch.tensor([1, 0, 0, 1])
    completion_ids = torch.randint(1, vocab, (4, 5))
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    weights = torch.randn(4, 5)
    inputs = (prompt_ids, prompt_mask, prompt_index, completion_ids, completion_mask, weights)
    return shared_prefix.logprobs_and_grads(model, *inputs, temperature=0.7, shared=shared)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_cpu_attention_equals_sdpa(arch, shared, monkeypatch):
    model = tiny_model(arch).float()
    model.set_attn_implementation("sdpa")
    expected, expected_grads = logprobs_and_grads(model, shared)
    attention.use_cpu_attention(model)
    assert model.config._attn_implementation == attention.NAME
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", None)  # a fallback to SDPA would fail
    got, grads = logprobs_and_grads(model, shared)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_long_rows_fall_back_to_sdpa(monkeypatch):
    model = tiny_model("llama").float()
    model.set_attn_implementation("sdpa")
    expected, _ = logprobs_and_grads(model, shared=True)
    monkeypatch.setattr(attention, "MAX_SCORES", 0)  # every score tensor counts as long
    attention.use_cpu_attention(model)
    got, _ = logprobs_and_grads(model, shared=True)
    assert torch.equal(got, expected)


def test_a_saved_model_does_not_name_grpolab_attention(tmp_path):
    model = tiny_model("llama")
    attention.use_cpu_attention(model)
    model.save_pretrained(tmp_path)
    assert attention.NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
