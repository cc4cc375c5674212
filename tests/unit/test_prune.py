"""Pruning (grpolab/model/prune.py): the spec grammar, Block Influence on hand-made hidden states, and a pruned
tiny-random that keeps its kept layers' weights bit for bit, loads with from_pretrained and generates."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from grpolab.errors import ModelError
from grpolab.model.loading import ensure_tiny_random, load_model, load_tokenizer, resolve_model_path
from grpolab.model.prune import PruneSpec, block_influence, build_pruned_model, choose_layers, parse_spec


@pytest.mark.parametrize(
    "text, spec",
    [
        ("", PruneSpec(layers=-1)),
        ("half", PruneSpec(layers=-1)),
        ("keep=0,2,5", PruneSpec(keep=(0, 2, 5))),
        ("every_other+mlp=64", PruneSpec(every_other=True, mlp=64)),
        ("layers=3", PruneSpec(layers=3)),
        ("mlp=32", PruneSpec(mlp=32)),
    ],
)
def test_spec_grammar(text, spec):
    assert parse_spec(text) == spec


@pytest.mark.parametrize("text", ["keep=a", "layers=0", "half+every_other", "drop=3", "mlp=-1", "every_other=2"])
def test_bad_specs_are_refused_in_one_line(text):
    with pytest.raises(ModelError, match="^prune: "):
        parse_spec(text)


def test_choose_layers():
    importance = [0.5, 0.1, 0.9, 0.2, 0.3]
    assert choose_layers(PruneSpec(layers=-1), 5, importance) == [0, 2, 4]  # ceil(5 / 2) most influential
    assert choose_layers(PruneSpec(layers=2), 5, importance) == [0, 2]
    assert choose_layers(PruneSpec(every_other=True), 5, None) == [0, 2, 4]
    assert choose_layers(PruneSpec(keep=(3, 1)), 5, None) == [1, 3]
    assert choose_layers(PruneSpec(mlp=8), 5, importance) == [0, 1, 2, 3, 4]
    with pytest.raises(ModelError, match="distinct layers in 0..4"):
        choose_layers(PruneSpec(keep=(5,)), 5, None)
    with pytest.raises(ModelError, match="more than the model's 5 layers"):
        choose_layers(PruneSpec(layers=6), 5, importance)


def test_block_influence_by_hand():
    h0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B=1, T=2, H=2]
    h1 = h0.clone()  # unchanged: cos 1, influence 0
    h2 = torch.tensor([[[0.0, 3.0], [-1.0, -1.0]]])  # token 0 turned 90 degrees (1 - 0), token 1 135 degrees
    mask = torch.tensor([[1.0, 1.0]])
    expected_last = 1.0 + (1 + math.cos(math.pi / 4))
    assert torch.allclose(block_influence((h0, h1, h2), mask), torch.tensor([0.0, expected_last]), atol=1e-6)
    masked = block_influence((h0, h1, h2), torch.tensor([[1.0, 0.0]]))  # the padded token does not count
    assert torch.allclose(masked, torch.tensor([0.0, 1.0]), atol=1e-6)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    source = str(ensure_tiny_random())
    target = tmp_path_factory.mktemp("pruned")
    summary = build_pruned_model(source, "keep=1+mlp=48", str(target), "8")
    return source, target, summary


def test_kept_layers_are_bit_identical_and_the_folder_loads(pruned):
    source, target, summary = pruned
    assert summary["kept_layers"] == [1] and summary["of_layers"] == 2 and summary["mlp"] == 48
    before, after = load_file(f"{source}/model.safetensors"), load_file(f"{target}/model.safetensors")
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
                 "input_layernorm.weight", "post_attention_layernorm.weight"):  # fmt: skip
        assert torch.equal(after[f"model.layers.0.{name}"], before[f"model.layers.1.{name}"])
    assert not any(key.startswith("model.layers.1.") for key in after)
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    # the MLP keeps 48 of its 128 channels, rows of gate / up and columns of down, each exactly
    gate, down = after["model.layers.0.mlp.gate_proj.weight"], after["model.layers.0.mlp.down_proj.weight"]
    assert gate.shape == (48, 64) and down.shape == (64, 48)
    source_gate = before["model.layers.1.mlp.gate_proj.weight"]
    rows = [next(i for i in range(128) if torch.equal(source_gate[i], row)) for row in gate]
    assert rows == sorted(rows)  # kept in their order
    assert torch.equal(down, before["model.layers.1.mlp.down_proj.weight"][:, rows])
    config = json.loads((target / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["intermediate_size"] == 48
    model = load_model(str(target))
    assert model.model.layers[0].self_attn.layer_idx == 0  # the KV cache indexes the new stack
    tokenizer = load_tokenizer(str(target))
    ids = tokenizer("1+1=", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_importance_is_recorded_and_prune_specs_resolve_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPOLAB_CACHE", str(tmp_path / "cache"))
    path = resolve_model_path("prune:tiny-random:layers=1", log=lambda message: None)
    origin = json.loads((tmp_path / "cache" / path.split("/cache/")[1] / "prune_origin.json").read_text())
    influence = origin["block_influence"]
    assert len(influence) == 2 and origin["kept_layers"] == [max(range(2), key=influence.__getitem__)]
    assert load_model(path).config.num_hidden_layers == 1
    assert resolve_model_path("prune:tiny-random:layers=1") == path  # built once
    with pytest.raises(ModelError, match="more than the model's 2 layers"):
        resolve_model_path("prune:tiny-random:layers=3", log=lambda message: None)
