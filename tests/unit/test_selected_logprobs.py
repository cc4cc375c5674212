"""The chunked selected-token log-probs (SelectedLogprobs) against the plain log-softmax path:
values, entropy and gradients (hidden states and the tied output head) on a tiny model."""

import torch

from grpolab.model import scoring as lp
from grpolab.model.loading import load_model, resolve_model_path


def plain(model, *args, temperature):
    """The reference path: full log-softmax, kept for backward (entropy_grad=True selects it)."""
    return lp.completion_logprobs(model, *args, temperature=temperature, with_entropy=True, entropy_grad=True)


def test_selected_logprobs_match_the_plain_path(monkeypatch):
    torch.manual_seed(0)
    model = load_model(resolve_model_path("tiny-random")).float()
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt_ids = torch.randint(0, vocab, (3, 4))
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    completion_ids = torch.randint(0, vocab, (3, 5))
    completion_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    monkeypatch.setattr(lp, "LOGIT_CHUNK_TOKENS", 5)  # several head products, one of them partial,
    monkeypatch.setattr(lp, "CACHE_CHUNK_TOKENS", 2)  # each in fp32 passes of 2 rows, the last one partial
    weights = torch.randn(3, 5)

    expected, expected_entropy = plain(model, *args, temperature=0.7)
    (expected * weights * completion_mask).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    got, entropy = lp.completion_logprobs(model, *args, temperature=0.7, with_entropy=True)
    (got * weights * completion_mask).sum().backward()
    mask = completion_mask.bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)
    assert (got[~mask] == 0).all()
    assert torch.allclose(entropy[mask], expected_entropy[mask], atol=1e-5)
    assert not entropy.requires_grad
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected_grads[name], atol=1e-5), name
