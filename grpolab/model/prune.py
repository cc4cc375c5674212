"""Pruning: a smaller model made from an existing one (a distillation student, DeepSeek-R1's small models).

A spec is one or more items joined by `+`:

- `keep=0,2,4`: keep these decoder layers (0-based, in this order of depth);
- `every_other`: keep layers 0, 2, 4, ...;
- `layers=N`: keep the N layers of highest measured importance; `half`: N = ceil(L / 2) (the default);
- `mlp=M`: also shrink every kept layer's MLP to its M most important intermediate channels.

(choice) A layer's importance is its Block Influence (ShortGPT, Men et al. 2024): 1 - the mean cosine between
the hidden state entering the layer and the one leaving it, over the calibration prompts' tokens; a layer that
barely turns its input goes first. An MLP channel's importance is the mean over the same tokens of
|act(gate(x)) * up(x)| times the norm of the down-projection column that carries it out: what the channel adds
to the residual stream. Kept layers and channels keep their order and their weights bit for bit; the config's
`num_hidden_layers` (and `layer_types`, `intermediate_size`) follow, so the folder loads with `from_pretrained`.

This module also runs as the child process that builds a `prune:<model>:<spec>` folder into the cache
(`python -m grpolab.model.prune SOURCE SPEC TARGET CALIBRATION`, started by `loading.ensure_pruned`), for the reason
`random_init` gives: the source model's weights never enter the training process's heap.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from grpolab.errors import ModelError

CALIBRATION_PROMPTS = 32  # built-in arithmetic questions measure the importances, unless a task's are given


@dataclass(frozen=True)
class PruneSpec:
    keep: tuple[int, ...] = ()  # explicit layers (keep=...)
    every_other: bool = False
    layers: int = 0  # > 0: the most important layers; -1: half of them (`half`)
    mlp: int = 0  # > 0: the MLP width to keep

    def needs_measurement(self) -> bool:
        return self.layers != 0 or self.mlp > 0


def parse_spec(text: str) -> PruneSpec:
    """`keep=0,2,4` | `every_other` | `layers=N` | `half`, optionally `+mlp=M`; empty is `half`."""
    keep, every_other, layers, mlp, choices = (), False, 0, 0, 0
    for item in filter(None, (text or "half").split("+")):
        name, _, value = item.partition("=")
        try:
            if name == "keep":
                keep, choices = tuple(int(v) for v in value.split(",")), choices + 1
            elif name == "every_other" and not value:
                every_other, choices = True, choices + 1
            elif name == "half" and not value:
                layers, choices = -1, choices + 1
            elif name == "layers":
                layers, choices = int(value), choices + 1
            elif name == "mlp":
                mlp = int(value)
            else:
                raise ValueError
        except ValueError:
            raise ModelError(
                f"prune: bad spec item {item!r} in {text!r} (expected keep=0,2,4 | every_other | layers=N | half, "
                "optionally +mlp=M)"
            ) from None
    if choices > 1:
        raise ModelError(f"prune: spec {text!r} chooses the layers twice (one of keep= / every_other / layers= / half)")
    if layers < -1 or layers == 0 and choices and not keep and not every_other or mlp < 0:
        raise ModelError(f"prune: spec {text!r}: layers= and mlp= take integers >= 1")
    return PruneSpec(keep, every_other, layers, mlp)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a Llama-family causal LM (model.model.layers), refused in one line otherwise."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(f"prune: {type(model).__name__} has no model.layers (a Llama-family decoder is needed)")
    return layers


def choose_layers(spec: PruneSpec, total: int, importance: list[float] | None) -> list[int]:
    """The kept layers' indices, ascending."""
    if spec.keep:
        bad = [i for i in spec.keep if not 0 <= i < total]
        if bad or len(set(spec.keep)) != len(spec.keep):
            raise ModelError(f"prune: keep={spec.keep} must name distinct layers in 0..{total - 1}")
        return sorted(spec.keep)
    if spec.every_other:
        return list(range(0, total, 2))
    if spec.layers == 0:
        return list(range(total))
    count = math.ceil(total / 2) if spec.layers == -1 else spec.layers
    if count > total:
        raise ModelError(f"prune: layers={count} is more than the model's {total} layers")
    ranked = sorted(range(total), key=lambda i: -importance[i])  # ties keep the shallower layer
    return sorted(ranked[:count])


def block_influence(hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """[L] summed 1 - cos(h_l, h_{l+1}) over the tokens in `mask` [B, T], from the L + 1 hidden states [B, T, H]
    (`output_hidden_states`; the last one is after the final norm in transformers, so the last layer's output
    is taken as given there: its influence is measured against the normed state, as every layer's input is)."""
    values = []
    for before, after in zip(hidden_states[:-1], hidden_states[1:]):
        cosine = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)  # [B, T]
        values.append(((1 - cosine) * mask).sum())
    return torch.stack(values)


def mlp_parts(layer):
    mlp = getattr(layer, "mlp", None)
    parts = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if any(not isinstance(part, torch.nn.Linear) for part in parts):
        raise ModelError("prune: mlp= needs gated MLPs with gate_proj / up_proj / down_proj (Llama, Qwen2, Mistral)")
    return parts


@torch.no_grad()
def measure_importance(model, batches: list[dict], with_mlp: bool) -> tuple[list[float], list[torch.Tensor]]:
    """(Block Influence of each layer, [I] channel importance of each layer's MLP or empty) over `batches` of
    tokenizer output (input_ids, attention_mask)."""
    layers = decoder_layers(model)
    influence = torch.zeros(len(layers))
    channels = [torch.zeros(mlp_parts(layer)[2].in_features) for layer in layers] if with_mlp else []
    tokens = 0.0
    current_mask = {}

    def down_input(index):
        def hook(module, inputs):
            activation = inputs[0].float().abs() * current_mask["mask"].unsqueeze(-1)  # [B, T, I]
            channels[index].add_(activation.sum((0, 1)) * module.weight.float().norm(dim=0))

        return hook

    handles = [mlp_parts(layer)[2].register_forward_pre_hook(down_input(i)) for i, layer in enumerate(layers)]
    try:
        for batch in batches if with_mlp else []:
            current_mask["mask"] = batch["attention_mask"].float()
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    for batch in batches:
        mask = batch["attention_mask"].float()
        out = model(**batch, output_hidden_states=True)
        influence += block_influence(out.hidden_states, mask)
        tokens += mask.sum().item()
    return (influence / max(tokens, 1.0)).tolist(), [c / max(tokens, 1.0) for c in channels]


def shrink_mlp(layer, keep: torch.Tensor) -> None:
    """Keep the intermediate channels `keep` (ascending indices) of a gated MLP, weights copied exactly."""
    gate, up, down = mlp_parts(layer)
    for projection in (gate, up):
        projection.weight = torch.nn.Parameter(projection.weight.data[keep].clone())
        if projection.bias is not None:
            projection.bias = torch.nn.Parameter(projection.bias.data[keep].clone())
        projection.out_features = len(keep)
    down.weight = torch.nn.Parameter(down.weight.data[:, keep].clone())
    down.in_features = len(keep)
    if hasattr(layer.mlp, "intermediate_size"):
        layer.mlp.intermediate_size = len(keep)


def prune_model(model, spec: PruneSpec, batches: list[dict]) -> dict:
    """Prune `model` in place as `spec` says; returns what was done (kept layers, importances, sizes)."""
    layers = decoder_layers(model)
    total = len(layers)
    if spec.mlp and spec.mlp > mlp_parts(layers[0])[2].in_features:
        raise ModelError(f"prune: mlp={spec.mlp} is wider than the model's {mlp_parts(layers[0])[2].in_features}")
    influence, channels = measure_importance(model, batches, spec.mlp > 0) if spec.needs_measurement() else ([], [])
    kept = choose_layers(spec, total, influence)
    model.model.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
        if spec.mlp:
            order = torch.argsort(channels[kept[new_index]], descending=True, stable=True)
            shrink_mlp(layer, order[: spec.mlp].sort().values)
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)
    if spec.mlp:
        config.intermediate_size = spec.mlp
    parameters = sum(p.numel() for p in model.parameters())
    return {"kept_layers": kept, "of_layers": total, "block_influence": influence, "mlp": spec.mlp or None,
            "parameters": parameters}  # fmt: skip


def calibration_prompts(tokenizer, count: int) -> list[list[int]]:
    """The built-in calibration prompts: `count` arithmetic questions (seeded), chat-templated where the
    tokenizer has a template. `grpolab prune task=...` measures on a task's own prompts instead."""
    rng = random.Random(0)
    prompts = []
    for _ in range(count):
        a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+-*")
        messages = [{"role": "user", "content": f"What is {a} {op} {b}? Think, then give the number."}]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
        else:
            ids = tokenizer(f"Question: {messages[0]['content']}\nAnswer:")["input_ids"]
        prompts.append(list(ids))
    return prompts


def calibration_batches(prompts: list[list[int]], pad_id: int, batch_size: int = 8) -> list[dict]:
    """Token-id prompts right-padded in batches of input_ids and attention_mask."""
    batches = []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start : start + batch_size]
        width = max(len(row) for row in rows)
        ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def build_pruned_model(source: str, spec_text: str, target: str, calibration: str) -> dict:
    """Load `source`, prune it by `spec_text`, save it to folder `target`. `calibration` names a JSON file of
    a task's token-id prompts (written by `grpolab prune task=...`) or is a count of built-in prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # as random_init does: this runs as a child

    spec = parse_spec(spec_text)
    tokenizer = AutoTokenizer.from_pretrained(source)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    if calibration.isdigit():
        prompts, origin = calibration_prompts(tokenizer, int(calibration)), f"{calibration} built-in prompts"
    else:
        given = json.loads(Path(calibration).read_text())  # {"task": name, "prompts": [[token id, ...], ...]}
        prompts, origin = given["prompts"], f"{len(given['prompts'])} training prompts of {given['task']}"
    batches = calibration_batches(prompts, pad_id) if spec.needs_measurement() else []
    summary = prune_model(model, spec, batches)
    model.save_pretrained(target, safe_serialization=True)
    model.generation_config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    origin = {"source": source, "spec": spec_text or "half", "calibration": origin}
    Path(target, "prune_origin.json").write_text(json.dumps({**origin, **summary}, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    from grpolab.model.random_init import child_main

    usage = "python -m grpolab.model.prune SOURCE SPEC TARGET CALIBRATION"
    sys.exit(child_main(sys.argv[1:], usage, build_pruned_model))
