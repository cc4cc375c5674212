"""The frozen reference on the engine's packed forward (`train.reference_forward`, grpolab/engine/scoring.py):
equal to the transformers scorer in fp32, within a bounded gap in bf16, reset by pi_ref <- pi_theta, and refused
in one line where it does not run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from grpolab.engine.decoder import PackedDecoder
from grpolab.engine.scoring import PackedScorer, packed_logprobs
from grpolab.errors import ConfigError
from grpolab.model.scoring import completion_logprobs
from grpolab.training.reference import Reference, packed_reference_dtype
from tests.unit.test_engine import tiny_model


def batch(vocab: int):
    """3 distinct left-padded prompts, 2 right-padded completions each (one of a single token)."""
    torch.manual_seed(0)
    prompt_ids, prompt_mask = torch.randint(3, vocab, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    prompt_mask[1, :3] = prompt_mask[2, :1] = 0
    completion_ids, completion_mask = torch.randint(3, vocab, (6, 5)), torch.ones(6, 5, dtype=torch.long)
    completion_mask[1, 3:] = completion_mask[4, 1:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask, torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "qwen2", "mistral"])
def test_packed_fp32_logprobs_equal_the_transformers_scorer(arch):
    model = tiny_model(arch, seed=1)
    prompt_ids, prompt_mask, completion_ids, completion_mask, index = batch(model.config.vocab_size)
    with torch.no_grad():
        expected, _ = completion_logprobs(model, prompt_ids[index], prompt_mask[index], completion_ids,
                                          completion_mask, temperature=0.7)  # fmt: skip
    decoder = PackedDecoder(model, torch.float32)
    shared = packed_logprobs(decoder, prompt_ids, prompt_mask, completion_ids, completion_mask, 0.7, index)
    unshared = packed_logprobs(decoder, prompt_ids[index], prompt_mask[index], completion_ids, completion_mask, 0.7)
    assert (shared - expected).abs().max() < 1e-5
    assert (unshared - expected).abs().max() < 1e-5
    assert ((shared == 0) == (completion_mask == 0)).all()  # 0 exactly off the mask, never 0 on it


def test_packed_bf16_logprobs_stay_close():
    model = tiny_model("llama", seed=1)
    prompt_ids, prompt_mask, completion_ids, completion_mask, index = batch(model.config.vocab_size)
    with torch.no_grad():
        expected, _ = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                          prompt_index=index)  # fmt: skip
    got = packed_logprobs(PackedDecoder(model, torch.bfloat16), prompt_ids, prompt_mask, completion_ids,
                          completion_mask, prompt_index=index)  # fmt: skip
    assert (got - expected).abs().max() < 0.02  # measured 0.003 (bf16 weights and residual stream)


def test_a_packed_reference_is_reset_to_the_policy():
    policy = tiny_model("llama", seed=1)
    reference = Reference(policy, packed_dtype=torch.float32)
    assert reference.frozen is None  # no second transformers model
    prompt_ids, prompt_mask, completion_ids, completion_mask, index = batch(policy.config.vocab_size)
    with reference.model() as scorer:
        assert isinstance(scorer, PackedScorer)
        before, entropy = scorer(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index=index)
    assert entropy is None
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        moved, _ = completion_logprobs(policy, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                       prompt_index=index)  # fmt: skip
    with reference.model() as scorer:  # still the old weights
        assert torch.equal(scorer(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index=index)[0],
                           before)  # fmt: skip
    reference.reset()
    with reference.model() as scorer:
        after, _ = scorer(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index=index)
    assert (after - moved).abs().max() < 1e-5 and reference.resets == 1


def config(choice: str, resets: int = 0, strategy: str = "none"):
    return SimpleNamespace(
        train=SimpleNamespace(reference_forward=choice),
        grpo=SimpleNamespace(ref_reset_every=resets, iteration_steps=0),
        lora=SimpleNamespace(rank=0),
        parallel=SimpleNamespace(strategy=strategy),
    )


def test_the_reference_forward_choice():
    llama, gpt2 = tiny_model("llama"), tiny_model("gpt2")
    assert packed_reference_dtype(config("packed"), llama, bf16=True) == torch.bfloat16
    assert packed_reference_dtype(config("packed"), llama, bf16=False) == torch.float32
    assert packed_reference_dtype(config("transformers"), llama, bf16=True) is None
    # packed is refused in one line where it does not run
    for model, settings, what in [
        (gpt2, config, "model_type 'gpt2'"),
        (llama, lambda choice: config(choice, resets=5), "grpo.ref_reset_every"),
        (llama, lambda choice: config(choice, strategy="fsdp"), "parallel.strategy=fsdp"),
    ]:
        assert packed_reference_dtype(settings("transformers"), model, bf16=False) is None
        with pytest.raises(ConfigError, match=f"train.reference_forward: packed .*{what}") as refused:
            packed_reference_dtype(settings("packed"), model, bf16=False)
        assert "\n" not in str(refused.value)


def test_the_packed_scorer_refuses_sequences_beyond_the_sliding_window():
    model = tiny_model("llama", seed=1)
    prompt_ids, prompt_mask, completion_ids, completion_mask, index = batch(model.config.vocab_size)
    scorer = PackedScorer(PackedDecoder(model, torch.float32), window=8)
    with pytest.raises(ValueError, match="sliding window"):
        scorer(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index=index)


@pytest.mark.parametrize(
    "extra", [["lora.rank=4"], ["parallel.strategy=fsdp"], ["grpo.ref_reset_every=5"], ["grpo.iteration_steps=5"]]
)
def test_packed_is_refused_at_config_time_where_it_cannot_run(extra):
    from grpolab.config import load_config

    with pytest.raises(ConfigError, match="train.reference_forward: packed does not run with"):
        load_config(None, ["train.reference_forward=packed", *extra])
    load_config(None, extra)  # the default, the transformers reference, runs with them
