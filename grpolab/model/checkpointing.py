"""Activation checkpointing per decoder layer that keeps the key / value cache, so that it works with the
shared-prompt scoring of `scoring.shared_prefix_hidden` (prompts pass once, their cache feeds the completions).

Each decoder layer's `forward` is replaced, on the instance, by one that runs the layer under
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`: instead of the activations inside the layer (norms,
q / k / v, attention, the MLP's [B, L, intermediate] states) only the layer's input [B, L, H] is kept, and the layer
runs a second time in backward to rebuild the rest. Cost: one extra forward of every layer per backward (~1/3 more
compute). Without gradients (no-grad scoring, the reference, generation) the layer runs unchanged. The modules
stay the same objects, so state_dict keys, optimizers and LoRA are untouched.

(choice) Not transformers' `gradient_checkpointing_enable()`: its layers drop the cache in training (`use_cache=False`,
`cache=None`), which breaks the shared-prompt path. The cache is the catch: a layer's attention appends to its entry
(`cache.update(k, v, layer_idx)`), so a plain recompute in backward would append a second time and attend to the
wrong keys. The dynamic caches scoring uses (transformers >= 4.56: `cache.layers[i]`, a `DynamicLayer` or its
sliding-window variant) never write into their tensors: `update` rebinds `keys = torch.cat(...)`, as
`batch_select_indices` rebinds `keys = keys[indices]`. So a shallow copy of the layer's entry taken before its call
is the cache exactly as the layer saw it; the recompute runs on a private stand-in cache holding only that copy
(the live cache is not touched in backward, nor kept alive until it). Static caches write in place, but they serve
generation only, which runs without gradients. The keys / values a prompt pass leaves in the cache are outputs of
its checkpointed layers: non-reentrant checkpointing keeps the ordinary autograd graph and only recomputes saved
tensors, so the completions' gradients reach the prompt pass through them.

Memory kept per layer and pass: its input [B, L, H] (the shared completion pass also keeps its entry's gathered
prompt keys / values, which the attention would save anyway). `offload=True` keeps that input in host memory
(pinned, copied without blocking) and brings it back for the recompute: the layer inputs then take host memory
instead of accelerator memory, at the price of a host round trip per layer. On a CPU model it changes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from transformers.cache_utils import Cache

from grpolab.model.hf_compat import decoder_of


def enable_activation_checkpointing(model: torch.nn.Module, offload: bool = False) -> int:
    """Checkpoint every decoder layer of `model` (a causal LM, or a peft model around one); returns the number of
    layers. Calling it again only changes `offload`. A deep copy of the model (the frozen reference) keeps the
    wrapping and computes with its own weights."""
    layers = decoder_of(model).layers
    for position, layer in enumerate(layers):
        forward = layer.forward
        if isinstance(forward, functools.partial) and forward.func is checkpointed_forward:
            forward = forward.args[0]  # already wrapped: keep the original
        # a bound method is deep-copied onto the copied layer, so a copy of the model runs its own weights
        layer.forward = functools.partial(checkpointed_forward, forward, cache_index(layer, position), offload)
    return len(layers)


def cache_index(layer: torch.nn.Module, position: int) -> int:
    """The entry the layer's attention updates (its `layer_idx`), else the layer's position in the stack."""
    indices = (getattr(module, "layer_idx", None) for module in layer.modules())
    return next((index for index in indices if isinstance(index, int)), position)


def checkpointed_forward(forward: Callable, index: int, offload: bool, *args: Any, **kwargs: Any) -> Any:
    """`forward(*args, **kwargs)` of one decoder layer, checkpointed when gradients are on."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    hidden_states, *rest = args if args else (kwargs.pop("hidden_states"),)
    if any(isinstance(arg, Cache) for arg in rest):
        raise TypeError("activation checkpointing: a decoder layer must receive its cache by keyword")
    cache_name = next((name for name, value in kwargs.items() if isinstance(value, Cache)), None)
    replay = cache_replay(kwargs[cache_name], index) if cache_name is not None else None
    recompute_kwargs = {name: value for name, value in kwargs.items() if name != cache_name}
    pending = [(hidden_states, kwargs)]  # the first call is the forward: the caller's tensor and live cache
    device = hidden_states.device

    def run(layer_input: torch.Tensor, *device_anchor: torch.Tensor) -> Any:
        with uncached_casts():
            if pending:
                states, call_kwargs = pending.pop()
                return forward(states, *rest, **call_kwargs)
            if replay is not None:
                recompute_kwargs[cache_name] = replay()
            return forward(layer_input.to(device, non_blocking=True), *rest, **recompute_kwargs)

    if not offload or device.type == "cpu":
        return torch.utils.checkpoint.checkpoint(run, hidden_states, use_reentrant=False)
    # checkpoint infers the device whose RNG and autocast state it restores from its tensor arguments: the
    # empty tensor names the layer's device, since the kept input is on the host
    anchor = hidden_states.new_empty(0)
    return torch.utils.checkpoint.checkpoint(run, host_copy(hidden_states), anchor, use_reentrant=False)


@contextlib.contextmanager
def uncached_casts():
    """Autocast casts each fp32 weight to bf16 once per autocast region and keeps the copy until the region ends:
    with checkpointing that would hold a bf16 copy of every layer's weights through the whole forward (2.6 GB for
    a 1.5B model) although nothing saves them for backward. Inside a checkpointed layer each copy is freed after
    its matmul (the same bf16 values: a cast is exact to repeat)."""
    previous = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(previous)


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy in host memory, pinned and asynchronous when it comes from a CUDA device."""
    pinned = tensor.device.type == "cuda"
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pinned)
    return host.copy_(tensor.detach(), non_blocking=pinned)


def cache_replay(cache: Cache, index: int) -> Callable[[], Cache]:
    """A maker of stand-ins for `cache` as the layer finds it now, one per recompute (a recompute mutates its
    stand-in): a shallow copy of the cache whose entries are placeholders, but for a copy of entry `index`. Only
    this entry is held, not the cache, whose entries end up holding every layer's full keys / values."""
    entries = getattr(cache, "layers", None)
    if not isinstance(entries, list):
        raise TypeError(f"activation checkpointing: {type(cache).__name__} has no per-layer entries (`layers`)")
    entry = copy.copy(entries[index]) if index < len(entries) else None  # None: created lazily by `update`
    shell = copy.copy(cache)
    shell.layers = [OTHER_LAYER] * len(entries)

    def replay() -> Cache:
        stand_in = copy.copy(shell)
        stand_in.layers = list(shell.layers)
        if entry is not None:
            stand_in.layers[index] = copy.copy(entry)
        return stand_in

    return replay


class OtherLayerEntry:
    """Stands for the cache entries of the other layers in a recompute: a decoder layer reads only its own."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"activation checkpointing: a recomputed decoder layer read another layer's cache entry ({name!r}); "
            "layers that share keys / values across layers are not supported"
        )


OTHER_LAYER = OtherLayerEntry()
