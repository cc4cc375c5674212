"""The grpolab engine against transformers `generate` (the `hf` backend) on tiny models built in code:
greedy token identity, sampling distributions, seeds, stopping, prefix sharing, log-probs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from grpolab.engine import SamplingParams, make_engine
from grpolab.engine.decoder import Linear, PackedDecoder, onednn_prepacks
from grpolab.engine.grpolab_engine import GrpolabEngine
from grpolab.engine.hf import HFEngine, left_pad
from grpolab.engine.sampling import inverse_cdf_sample, warp_logits
from grpolab.model.loading import build_tiny_tokenizer
from grpolab.model.scoring import completion_logprobs
from grpolab.rollout.batch import right_pad

TOKENIZER = build_tiny_tokenizer()
PROMPTS = ["What is 12 + 30?", "Hi", "Count: 1, 2, 3, 4, 5, 6, 7,", "Name a colour."]


def tiny_model(arch: str, seed: int = 0):
    common = dict(
        vocab_size=len(TOKENIZER),
        eos_token_id=TOKENIZER.eos_token_id,
        pad_token_id=TOKENIZER.pad_token_id,
        bos_token_id=TOKENIZER.bos_token_id,
        # A tied random head mostly repeats the input token; untied heads give varied greedy text.
        tie_word_embeddings=arch == "llama-tied",
    )
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **common,
    )
    torch.manual_seed(seed)
    if arch in ("llama", "llama-tied"):
        model = LlamaForCausalLM(LlamaConfig(**llama_like))
    elif arch == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**llama_like))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **llama_like))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common))
    return model.eval()


def encode(texts):
    return [TOKENIZER(t)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize(
    "arch,packed",
    [("llama", True), ("llama", False), ("llama-tied", True), ("qwen2", True), ("mistral", True), ("gpt2", False)],
)
def test_greedy_is_token_identical_to_generate(arch, packed):
    model = tiny_model(arch)
    params = SamplingParams(max_new_tokens=24, temperature=0)
    expected = HFEngine(model, TOKENIZER).generate(encode(PROMPTS), 1, params)
    engine = GrpolabEngine(model, TOKENIZER, dtype="fp32", packed=packed)
    got = engine.generate(encode(PROMPTS), 1, params)
    assert (engine.packed is not None) == (packed and arch != "gpt2")
    for want, have in zip(expected, got):
        assert have[0].token_ids == want[0].token_ids
        assert have[0].finish_reason == want[0].finish_reason
        assert have[0].text == want[0].text
        assert have[0].logprobs == pytest.approx(want[0].logprobs, abs=1e-4)


def test_rows_that_stop_early_leave_the_batch_and_match_generate(llama):
    """Stop tokens taken from the greedy outputs make rows finish at different steps (compaction)."""
    free = GrpolabEngine(llama, TOKENIZER, dtype="fp32").generate(encode(PROMPTS), 1, SamplingParams(24, 0))
    stops = sorted({group[0].token_ids[k] for group, k in zip(free[1:3], (5, 10))})
    params = SamplingParams(max_new_tokens=24, temperature=0, stop_token_ids=stops)
    expected = HFEngine(llama, TOKENIZER).generate(encode(PROMPTS), 1, params)
    got = GrpolabEngine(llama, TOKENIZER, dtype="fp32").generate(encode(PROMPTS), 1, params)
    assert [g[0].token_ids for g in got] == [e[0].token_ids for e in expected]
    assert [g[0].finish_reason for g in got] == [e[0].finish_reason for e in expected]
    assert sum(g[0].finish_reason == "stop" for g in got) >= 2
    assert len({len(g[0].token_ids) for g in got}) >= 3


def test_warp_logits_equals_transformers_warpers():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    logits[0, :5] = 3.0  # ties at the top-k boundary
    logits[1] = 0.0  # all tied
    for temperature, top_k, top_p in [(1.0, 5, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (0.5, 10, 0.5), (1.0, 4, 0.9)]:
        scores = logits.clone()
        if temperature != 1.0:
            scores = TemperatureLogitsWarper(temperature)(None, scores)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        assert torch.equal(warp_logits(logits, temperature, top_k, top_p), scores)
    assert (warp_logits(logits, 1.0, 2, 1.0)[0] > -math.inf).sum() == 5  # top-k keeps every tied token


def chi_square_threshold(dof: int, z: float = 3.09) -> float:
    """Upper 0.1% quantile of chi-square (Wilson-Hilferty approximation)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 8, 1.0), (1.5, 0, 0.6)])
def test_sampled_frequencies_match_the_warped_softmax(llama, temperature, top_k, top_p):
    prompt = encode(["Pick: "])
    draws = 4000
    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p, seed=7)
    group = GrpolabEngine(llama, TOKENIZER, dtype="fp32").generate(prompt, draws, params)[0]
    counts = torch.bincount(torch.tensor([c.token_ids[0] for c in group]), minlength=len(TOKENIZER)).float()
    with torch.no_grad():
        logits = llama(torch.tensor(prompt)).logits[0, -1]
    probs = torch.softmax(warp_logits(logits[None], temperature, top_k, top_p)[0], -1)
    assert counts[probs == 0].sum() == 0  # nothing outside the top-k / top-p support
    expected = probs * draws
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    expected = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    observed, expected = observed[expected > 0], expected[expected > 0]
    statistic = ((observed - expected) ** 2 / expected).sum().item()
    assert big.sum() >= 3
    assert statistic < chi_square_threshold(len(observed) - 1)
    for completion in group[:20]:  # the reported log-prob is that of the warped distribution
        assert completion.logprobs[0] == pytest.approx(probs[completion.token_ids[0]].log().item(), abs=1e-5)


def test_same_seed_same_samples_and_global_rng_untouched(llama):
    engine = GrpolabEngine(llama, TOKENIZER, dtype="fp32")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=123)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = engine.generate(encode(PROMPTS), 3, params)
    assert torch.equal(torch.get_rng_state(), before)
    second = engine.generate(encode(PROMPTS), 3, params)
    other = engine.generate(encode(PROMPTS), 3, SamplingParams(max_new_tokens=12, temperature=1.0, seed=124))
    ids = lambda groups: [c.token_ids for group in groups for c in group]
    assert ids(first) == ids(second)
    assert ids(first) != ids(other)


def test_stop_strings_end_the_completion_where_the_string_appears(llama):
    free = GrpolabEngine(llama, TOKENIZER, dtype="fp32").generate(encode(PROMPTS[:1]), 1, SamplingParams(24, 0))
    text = free[0][0].text
    stop = text[6:8]  # two characters produced mid-way
    params = SamplingParams(max_new_tokens=24, temperature=0, stop_strings=[stop])
    got = GrpolabEngine(llama, TOKENIZER, dtype="fp32").generate(encode(PROMPTS[:1]), 1, params)[0][0]
    assert got.finish_reason == "stop"
    assert got.text.endswith(stop) and stop not in got.text[:-1]
    assert text.startswith(got.text)
    reference = HFEngine(llama, TOKENIZER).generate(encode(PROMPTS[:1]), 1, params)[0][0]
    assert got.token_ids == reference.token_ids


def test_each_prompt_is_prefilled_once_for_its_n_samples(llama, monkeypatch):
    seen = []
    original = PackedDecoder.prefill

    def spy(self, ids, mask, n, max_new_tokens):
        seen.append((ids.shape[0], n))
        return original(self, ids, mask, n, max_new_tokens)

    monkeypatch.setattr(PackedDecoder, "prefill", spy)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)
    groups = GrpolabEngine(llama, TOKENIZER, dtype="fp32").generate(encode(PROMPTS), 5, params)
    assert seen == [(len(PROMPTS), 5)]
    assert [len(g) for g in groups] == [5] * len(PROMPTS)
    assert all(len(c.token_ids) == len(c.logprobs) for g in groups for c in g)


@pytest.mark.parametrize("packed", [True, False])
def test_logprobs_agree_with_the_trainer(llama, packed):
    temperature = 0.8
    params = SamplingParams(max_new_tokens=16, temperature=temperature, seed=1)
    engine = GrpolabEngine(llama, TOKENIZER, dtype="fp32", packed=packed)
    difference, _ = logprob_gaps(llama, engine.generate(encode(PROMPTS), 2, params), temperature)
    assert difference.max().item() < 1e-4


def logprob_gaps(model, groups, temperature: float):
    """|trainer log-prob - engine log-prob| per completion token of `groups` (answers to PROMPTS), 0 off the mask;
    returns (gaps [B, T], mask [B, T])."""
    completions = [c for g in groups for c in g]
    prompts = [p for p, group in zip(encode(PROMPTS), groups) for _ in group]
    prompt_ids, prompt_mask = left_pad(prompts, TOKENIZER.pad_token_id)
    completion_ids = right_pad([c.token_ids for c in completions], TOKENIZER.pad_token_id, torch.long)
    completion_mask = right_pad([[1] * len(c.token_ids) for c in completions], 0, torch.long)
    with torch.no_grad():
        trainer, _ = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    engine_logprobs = right_pad([c.logprobs for c in completions], 0.0, torch.float32)
    return (trainer - engine_logprobs).abs() * completion_mask, completion_mask


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "qwen2", "gpt2"])
def test_bf16_engine_follows_synced_weights(arch):
    model = tiny_model(arch, seed=1)
    engine = make_engine("grpolab", model, TOKENIZER, "bf16")
    params = SamplingParams(max_new_tokens=10, temperature=0)
    before = engine.generate(encode(PROMPTS), 1, params)
    assert engine.dtype == torch.bfloat16
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    engine.sync_weights(model)
    after = engine.generate(encode(PROMPTS), 1, params)
    fresh = make_engine("grpolab", model, TOKENIZER, "bf16").generate(encode(PROMPTS), 1, params)
    ids = lambda groups: [g[0].token_ids for g in groups]
    assert ids(after) == ids(fresh)
    assert ids(after) != ids(before)


def test_length_finish_and_zero_tokens(llama):
    engine = GrpolabEngine(llama, TOKENIZER, dtype="fp32")
    out = engine.generate(encode(PROMPTS[:2]), 2, SamplingParams(max_new_tokens=5, temperature=1.0, seed=0))
    assert all(c.finish_reason == "length" and len(c.token_ids) == 5 for g in out for c in g)
    empty = engine.generate(encode(PROMPTS[:1]), 2, SamplingParams(max_new_tokens=0))
    assert [(c.token_ids, c.finish_reason) for c in empty[0]] == [([], "length"), ([], "length")]


@pytest.mark.slow
def test_smollm2_greedy_matches_generate_except_at_near_ties():
    """fp32 engine vs `generate` on SmolLM2-135M: identical for nearly all sequences; where one differs,
    the two best logits at the first differing token were within a rounding-level margin."""
    from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path
    from grpolab.rollout.batch import encode_prompt
    from grpolab.tasks import get_task

    path = resolve_model_path("smollm2-135m")
    tokenizer, model = load_tokenizer(path), load_model(path).eval()
    task = get_task("arithmetic")
    prompts = [encode_prompt(tokenizer, task, example) for example in task.eval_examples(16)]
    params = SamplingParams(max_new_tokens=48, temperature=0)
    expected = HFEngine(model, tokenizer).generate(prompts, 1, params)
    got = GrpolabEngine(model, tokenizer, dtype="fp32").generate(prompts, 1, params)
    differing = 0
    for prompt, want, have in zip(prompts, expected, got):
        want, have = want[0].token_ids, have[0].token_ids
        if want == have:
            continue
        differing += 1
        first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
        with torch.no_grad():
            logits = model(torch.tensor([prompt + want[:first]])).logits[0, -1]
        top = logits.topk(2).values
        assert (top[0] - top[1]).item() < 1e-3, f"not a near-tie at token {first}: margin {top[0] - top[1]}"
    assert differing <= len(prompts) // 8


def test_two_level_sampler_draws_the_distribution_and_never_a_zero_token():
    """Vocabulary of 1000 (not a multiple of the 256-token block), zeros inside and across blocks."""
    torch.manual_seed(3)
    probs = torch.softmax(torch.randn(1000) * 2, -1)
    probs[250:520] = 0  # a zero run across a block boundary
    probs[700:] = 0
    probs /= probs.sum()
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([inverse_cdf_sample(probs.repeat(2000, 1), generator) for _ in range(20)])
    counts = torch.bincount(draws, minlength=1000).float()
    assert counts[probs == 0].sum() == 0
    expected = probs * draws.numel()
    big = expected >= 5
    statistic = ((counts[big] - expected[big]) ** 2 / expected[big]).sum().item()
    assert statistic < chi_square_threshold(int(big.sum()) - 1)


@pytest.mark.skipif(not onednn_prepacks(torch.bfloat16, torch.device("cpu")), reason="no oneDNN bf16 on this CPU")
def test_prepacked_bf16_linear_equals_f_linear_and_reloads():
    torch.manual_seed(0)
    weight, bias, x = torch.randn(40, 24), torch.randn(40), torch.randn(2, 5, 24).bfloat16()
    linear = Linear(weight, bias, torch.bfloat16)
    assert linear.prepacked
    assert torch.equal(linear(x), torch.nn.functional.linear(x, weight.bfloat16(), bias.bfloat16()))
    other = torch.randn(40, 24)
    linear.load(other, None)
    assert torch.equal(linear(x), torch.nn.functional.linear(x, other.bfloat16()))


def test_no_prepacking_where_onednn_has_no_bf16_path(monkeypatch):
    """An AVX2-only CPU: oneDNN refuses the bf16 reorder; the engine then keeps plain bf16 weights on F.linear."""
    from grpolab.engine import decoder

    def refuses(weight, rows):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or ...")

    decoder.onednn_bf16_reorder_works.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuses)
    try:
        assert not onednn_prepacks(torch.bfloat16, torch.device("cpu"))
        weight, x = torch.randn(40, 24), torch.randn(2, 5, 24).bfloat16()
        linear = Linear(weight, None, torch.bfloat16)
        assert not linear.prepacked
        assert torch.equal(linear(x), torch.nn.functional.linear(x, weight.bfloat16()))
    finally:
        decoder.onednn_bf16_reorder_works.cache_clear()
