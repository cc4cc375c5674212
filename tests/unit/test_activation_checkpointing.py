"""Activation checkpointing per decoder layer: log-probs and the gradients of every parameter equal the plain
pass, on the full-sequence and the shared-prompt scoring paths (whose cache the recompute must see as the forward
did), with LoRA, entropy and host offloading; without gradients the layers run unchanged."""

import copy
import gc
import weakref

import pytest
import torch
import torch.utils.checkpoint
from transformers.cache_utils import Cache

from grpolab.model.checkpointing import enable_activation_checkpointing
from grpolab.model.hf_compat import decoder_of
from grpolab.model.loading import load_model, resolve_model_path
from grpolab.model.lora import apply_lora
from grpolab.model.scoring import completion_logprobs


@pytest.fixture(scope="module")
def base_model():
    return load_model(resolve_model_path("tiny-random")).float()


def scoring_batch(vocab: int) -> dict:
    """Two prompts of different lengths (left padded) and five right-padded completions, G = 2 and 3."""
    generator = torch.Generator().manual_seed(0)
    return dict(
        prompt_ids=torch.randint(1, vocab, (2, 5), generator=generator),
        prompt_mask=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
        prompt_index=torch.tensor([1, 0, 0, 1, 0]),  # rows continue prompts 1, 0, 0, 1, 0
        completion_ids=torch.randint(1, vocab, (5, 4), generator=generator),
        completion_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]),
        weights=torch.randn(5, 4, generator=generator),
    )


def score(model, batch: dict, shared: bool, entropy: bool = False):
    """(log-probs [B, T], entropy or None), from the shared prompts or from each row's prompt repeated."""
    index = batch["prompt_index"]
    prompt_ids, prompt_mask = (batch["prompt_ids"], batch["prompt_mask"]) if shared else (
        batch["prompt_ids"][index], batch["prompt_mask"][index],
    )  # fmt: skip
    return completion_logprobs(
        model, prompt_ids, prompt_mask, batch["completion_ids"], batch["completion_mask"], temperature=0.8,
        with_entropy=entropy, entropy_grad=entropy, prompt_index=index if shared else None,
    )  # fmt: skip


def logprobs_and_grads(model, batch: dict, shared: bool, entropy: bool = False, backwards: int = 1):
    """Log-probs and the gradients of sum(logprobs * weights) (+ the entropy's sum) of every trained parameter."""
    model.zero_grad()
    logprobs, token_entropy = score(model, batch, shared, entropy)
    loss = (logprobs * batch["weights"] * batch["completion_mask"]).sum()
    if entropy:
        loss = loss + (token_entropy * batch["completion_mask"]).sum()
    for step in range(backwards):
        loss.backward(retain_graph=step < backwards - 1)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    assert all(grad.abs().sum() > 0 for grad in grads.values())
    return logprobs.detach(), grads


def assert_same(expected, got, mask: torch.Tensor) -> None:
    (expected_logprobs, expected_grads), (logprobs, grads) = expected, got
    assert torch.allclose(logprobs[mask], expected_logprobs[mask], atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-5), name


def count_layer_runs(model) -> list[int]:
    """A counter of decoder-layer runs (forward and recompute), from a pre-hook inside each layer."""
    runs = [0]
    for layer in decoder_of(model).layers:
        layer.post_attention_layernorm.register_forward_pre_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("entropy", [False, True])
def test_gradients_equal_the_plain_pass(base_model, shared, entropy):
    plain, checkpointed = copy.deepcopy(base_model), copy.deepcopy(base_model)
    keys = list(checkpointed.state_dict())
    assert enable_activation_checkpointing(checkpointed) == 2
    assert list(checkpointed.state_dict()) == keys
    runs = count_layer_runs(checkpointed)
    batch = scoring_batch(base_model.config.vocab_size)
    expected = logprobs_and_grads(plain, batch, shared, entropy)
    got = logprobs_and_grads(checkpointed, batch, shared, entropy)
    assert_same(expected, got, batch["completion_mask"].bool())
    passes = 2 if shared else 1  # prompts, then completions attending to their cache
    assert runs[0] == 2 * passes * 2  # every layer ran again in backward


def test_without_gradients_layers_run_unchanged(base_model, monkeypatch):
    plain, checkpointed = copy.deepcopy(base_model), copy.deepcopy(base_model)
    enable_activation_checkpointing(checkpointed)
    batch = scoring_batch(base_model.config.vocab_size)

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("checkpoint called without gradients")

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", no_checkpoint)
    with torch.no_grad():
        for shared in (False, True):
            expected, _ = score(plain, batch, shared)
            got, _ = score(checkpointed, batch, shared)
            assert torch.equal(got, expected)


def test_lora_gradients_equal_the_plain_pass(base_model):
    targets = "q_proj,k_proj,v_proj"
    plain = apply_lora(copy.deepcopy(base_model), rank=4, alpha=8, dropout=0.0, target_modules=targets)
    with torch.no_grad():  # LoRA starts at B = 0, where A gets no gradient
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    checkpointed = copy.deepcopy(plain)
    keys = list(checkpointed.state_dict())
    assert enable_activation_checkpointing(checkpointed) == 2
    assert list(checkpointed.state_dict()) == keys
    batch = scoring_batch(base_model.config.vocab_size)
    for shared in (False, True):
        expected = logprobs_and_grads(plain, batch, shared)
        got = logprobs_and_grads(checkpointed, batch, shared)
        assert set(got[1]) == {name for name, p in checkpointed.named_parameters() if "lora_" in name}
        assert_same(expected, got, batch["completion_mask"].bool())


def test_offload_on_cpu_gives_the_same_gradients(base_model):
    plain, checkpointed = copy.deepcopy(base_model), copy.deepcopy(base_model)
    assert enable_activation_checkpointing(checkpointed, offload=True) == 2
    batch = scoring_batch(base_model.config.vocab_size)
    for shared in (False, True):
        assert_same(logprobs_and_grads(plain, batch, shared), logprobs_and_grads(checkpointed, batch, shared),
                    batch["completion_mask"].bool())  # fmt: skip


def test_a_second_backward_recomputes_from_the_same_cache(base_model):
    plain, checkpointed = copy.deepcopy(base_model), copy.deepcopy(base_model)
    enable_activation_checkpointing(checkpointed)
    enable_activation_checkpointing(checkpointed)  # idempotent: still one checkpoint per layer
    runs = count_layer_runs(checkpointed)
    batch = scoring_batch(base_model.config.vocab_size)
    expected = logprobs_and_grads(plain, batch, shared=True, backwards=2)
    got = logprobs_and_grads(checkpointed, batch, shared=True, backwards=2)
    assert_same(expected, got, batch["completion_mask"].bool())
    assert runs[0] == 2 * 2 * 3  # 2 layers x 2 passes: one forward, two recomputes


def test_a_deep_copy_computes_with_its_own_weights(base_model):
    checkpointed = copy.deepcopy(base_model)
    enable_activation_checkpointing(checkpointed)
    copied, plain = copy.deepcopy(checkpointed), copy.deepcopy(base_model)
    for model in (copied, plain):
        with torch.no_grad():
            for p in decoder_of(model).layers.parameters():
                p.mul_(1.5)
    batch = scoring_batch(base_model.config.vocab_size)
    expected, got = logprobs_and_grads(plain, batch, True), logprobs_and_grads(copied, batch, True)
    assert_same(expected, got, batch["completion_mask"].bool())
    original, _ = score(checkpointed, batch, shared=True)
    assert not torch.allclose(original, got[0], atol=1e-3)


def live_cache(kwargs: dict) -> Cache:
    return next(value for value in kwargs.values() if isinstance(value, Cache))  # `cache` or `past_key_values`


def test_the_live_cache_is_not_kept_until_backward(base_model):
    """The recompute holds a copy of one entry per layer, not the cache, whose entries end up with every
    layer's full keys / values."""
    checkpointed = copy.deepcopy(base_model)
    enable_activation_checkpointing(checkpointed)
    caches = []
    decoder_of(checkpointed).layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: caches.append(weakref.ref(live_cache(kwargs))), with_kwargs=True
    )
    batch = scoring_batch(base_model.config.vocab_size)
    logprobs, _ = score(checkpointed, batch, shared=True)
    gc.collect()
    assert len(caches) == 2 and all(cache() is None for cache in caches)
    (logprobs * batch["weights"]).sum().backward()
