"""int8 rollout weights (`rollout.dtype=int8`, grpolab/engine/int8.py): the quantisers and the smoothing against
hand-computed values, each kernel against F.linear, and the engine's log-probs against the exact trainer on a
tiny Llama (a bounded mismatch, not equality: the trainer's log-probs stay exact and the gap is logged)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grpolab.engine import SamplingParams, make_engine
from grpolab.engine.hf import left_pad
from grpolab.engine.int8 import (
    ROW_FLOOR,
    Int8Linear,
    activation_maxima,
    fbgemm_works,
    quantize_rows,
    quantize_weight,
    smoothing_factors,
)
from grpolab.errors import ConfigError
from tests.unit.test_engine import PROMPTS, TOKENIZER, encode, logprob_gaps, tiny_model

NO_FBGEMM = pytest.mark.skipif(not fbgemm_works(), reason="no fbgemm op")
BACKENDS = ["int_mm", pytest.param("fbgemm", marks=NO_FBGEMM), pytest.param("fbgemm_rows", marks=NO_FBGEMM)]


def test_weights_are_quantised_per_output_channel():
    quantized, scale = quantize_weight(torch.tensor([[1.0, -0.5], [0.2, 0.1]]))
    assert scale.tolist() == pytest.approx([1 / 127, 0.2 / 127])
    assert quantized.dtype == torch.int8
    assert quantized.tolist() == [[127, -64], [127, 64]]  # -63.5 and 63.5 round half to even


def test_activations_are_quantised_per_row():
    quantized, scale = quantize_rows(torch.tensor([[2.0, -1.0], [0.0, 0.0]]))
    assert scale[:, 0].tolist() == pytest.approx([2 / 127, ROW_FLOOR / 127])
    assert quantized.tolist() == [[127, -64], [0, 0]]  # -63.5 rounds to -64; an all-zero row stays zero


def test_smoothing_factors_balance_the_two_ranges():
    # max|X| = [4, 1], max|W_:j| = [1, 4]: s = sqrt(4 / 1), sqrt(1 / 4)
    weight = torch.tensor([[1.0, -4.0], [0.5, 2.0]])
    assert smoothing_factors(torch.tensor([4.0, 1.0]), weight).tolist() == pytest.approx([2.0, 0.5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_linear_is_close_to_f_linear_and_reloads(backend):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(48, 64) * 0.1, torch.randn(48), torch.randn(3, 5, 64)
    layer = Int8Linear(weight, bias, backend=backend)
    expected = F.linear(x, weight, bias)
    assert layer(x).shape == (3, 5, 48)
    assert (layer(x) - expected).abs().max() < 0.02 * expected.abs().max()
    layer.load(weight * 2, bias)
    assert (layer(x) - F.linear(x, weight * 2, bias)).abs().max() < 0.04 * expected.abs().max()


@NO_FBGEMM
def test_fbgemm_rows_quantises_each_row_on_its_own_scale():
    # a row 1000x smaller than the other: one scale per tensor leaves it a few levels, one per row keeps its 8 bits
    torch.manual_seed(0)
    weight, x = torch.randn(32, 64) * 0.1, torch.randn(2, 64) * torch.tensor([[1.0], [1e-3]])
    expected = F.linear(x, weight)

    def small_row_error(backend):
        y = Int8Linear(weight, None, backend=backend)(x)
        return ((y[1] - expected[1]).abs().max() / expected[1].abs().max()).item()

    assert small_row_error("fbgemm_rows") < 0.03
    assert small_row_error("fbgemm_rows") < 2 * small_row_error("int_mm") + 1e-3
    assert small_row_error("fbgemm") > 10 * small_row_error("fbgemm_rows")


def test_smoothing_keeps_an_outlier_channel_from_eating_the_rows_range():
    torch.manual_seed(0)
    weight, x = torch.randn(32, 64) * 0.1, torch.randn(16, 64)
    x[:, 3] *= 60  # one channel far above the rest, as in LLM activations
    expected = F.linear(x, weight)
    plain = (Int8Linear(weight, None)(x) - expected).abs().mean()
    smoothed = (Int8Linear(weight, None, activation_max=x.abs().amax(0))(x) - expected).abs().mean()
    assert smoothed < 0.5 * plain


def test_activation_maxima_cover_every_projection_and_the_head():
    model = tiny_model("llama")
    ids, mask = left_pad(encode(PROMPTS), TOKENIZER.pad_token_id)
    maxima = activation_maxima(model, ids, mask)
    layers = model.config.num_hidden_layers
    assert set(maxima) == {(i, n) for i in range(layers) for n in ("qkv", "out", "gate_up", "down")} | {(-1, "head")}
    with torch.no_grad():
        final = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(maxima[(-1, "head")], final[mask.bool()].abs().amax(0))  # the final norm's output


def mean_mismatch(model, engine, temperature=1.0):
    groups = engine.generate(encode(PROMPTS), 4, SamplingParams(max_new_tokens=16, temperature=temperature, seed=0))
    gaps, mask = logprob_gaps(model, groups, temperature)
    return (gaps.sum() / mask.sum()).item()


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "qwen2"])
def test_int8_engine_logprobs_stay_near_the_trainers_and_follow_synced_weights(arch):
    model = tiny_model(arch, seed=1)
    engine = make_engine("grpolab", model, TOKENIZER, "int8")
    assert mean_mismatch(model, engine) < 0.01
    assert engine.int8 and engine.dtype == torch.float32
    assert all(isinstance(layer.qkv, Int8Linear) for layer in engine.packed.layers)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    engine.sync_weights(model)
    # against the new weights (stale ones would miss by far more): near a fresh engine calibrated on them
    synced, fresh = mean_mismatch(model, engine), mean_mismatch(model, make_engine("grpolab", model, TOKENIZER, "int8"))
    assert synced < 0.05 and synced < 1.5 * fresh


def test_int8_needs_the_packed_path():
    model = tiny_model("gpt2")
    engine = make_engine("grpolab", model, TOKENIZER, "int8")
    with pytest.raises(ConfigError, match="rollout.dtype=int8"):
        engine.generate(encode(PROMPTS[:1]), 1, SamplingParams(max_new_tokens=2, temperature=0))


def test_the_plan_counts_the_int8_copy_at_a_byte_per_weight():
    from grpolab.training.plan import tensor_gb, tensors_in

    model = tiny_model("llama")
    engine = make_engine("grpolab", model, TOKENIZER, "int8")
    engine.generate(encode(PROMPTS[:1]), 1, SamplingParams(max_new_tokens=1, temperature=0))
    layers = model.model.layers
    projections = sum(p.numel() for layer in layers for name, p in layer.named_parameters() if "proj" in name)
    head = model.get_output_embeddings().weight.numel()
    counted = tensor_gb(tensors_in(engine.packed)) * 1e9
    int8_bytes = projections + head  # one byte per weight; the rest (embedding, norms, scales) is float32
    assert int8_bytes < counted < int8_bytes + 4 * (model.num_parameters() - projections - head) + 64 * 1024
