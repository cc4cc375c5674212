"""8-bit rollout weights (`rollout.dtype=int8`): the engine's linear layers hold int8 weights with one
float scale per output channel and quantise their input on the fly (dynamic int8 activations).

Why: decoding 32 rows is bound by reading the weights, and int8 reads a quarter of fp32's bytes and half
of bf16's. On CPUs without bf16 (AVX2-only x86) this is the only way to stop reading fp32 weights.

Activations are smoothed first (SmoothQuant, Xiao et al. 2023): LLM activations carry a few channels far larger
than the rest, and one scale per row spends its 8 bits on them. Per input channel j, x_j / s_j and W_:j * s_j
leave the product unchanged and move the spread into the weights, s_j = max|X_j|^a / max|W_:j|^(1 - a) with
a = SMOOTHING_ALPHA and max|X_j| measured once on the first call's prompts (`activation_maxima`). Measured on
SmolLM2-135M, 4 prompts x 8 samples x 64 tokens: the mean |log-prob mismatch| per token against the fp32
trainer was 0.20 with per-row int8 activations and no smoothing (0.74 per tensor), 0.03 with int8 weights alone,
0.031 for the bf16 engine, and 0.11 with per-row activations and smoothing (`benchmarks/results/speed.md`).

Three kernels:
- `fbgemm` (PyTorch's own dynamic-quantised linear, `quantized::linear_dynamic`): int8 x uint8 products
  with AVX2 / AVX-512 / VNNI code paths; activations quantised per tensor (one scale for all rows).
- `fbgemm_rows`: the same op on rows first divided by their own max |x| (and the output multiplied back), so that
  its one scale per tensor is in effect one per row; the bias is added after.
- `int_mm` (`torch._int_mm`, int8 x int8 -> int32): activations quantised per row (symmetric), used
  where the fbgemm op is missing (it is deprecated upstream and may leave a future PyTorch) or fails.
Measured per call (`benchmarks/int8_rollouts.py kernels`: SmolLM2-135M's shapes, 32 rows, 2 threads): on an AMD
EPYC with AVX-512 VNNI, `int_mm` 1.2-4.1x faster than fp32 `F.linear`, fbgemm about 40% faster than `int_mm`; on
an AMD EPYC with AVX2 only, `int_mm` 13-24x *slower* than fp32 (no fast int8 kernel behind it there) and fbgemm
1.4-3.6x faster than fp32 (`benchmarks/results/speed.md`).
Weights: per-channel symmetric, scale = max |w| / 127 over the input dimension (the usual choice).
The trainer never sees these weights: its log-probs stay exact, and `logprob_mismatch` shows the price.
"""

from __future__ import annotations

import functools
import warnings

import torch

BACKENDS = ("int_mm", "fbgemm", "fbgemm_rows")
SMOOTHING_ALPHA = 0.5  # (choice) SmoothQuant's default balance between activation and weight ranges
PROJECTIONS = {"qkv": "q_proj", "out": "o_proj", "gate_up": "gate_proj", "down": "down_proj"}


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel, symmetric: w ~ q * scale with q in [-127, 127]; returns (q int8 [N, K], scale fp32 [N])."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    quantized = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return quantized, scale


ROW_FLOOR = 1e-30  # an all-zero row gets this range, so that 127 / range stays finite


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, symmetric: x ~ q * scale; returns (q int8 [M, K], scale fp32 [M, 1]). |x| * 127 / max|x| <= 127,
    so no clamp is needed (the ops here are a measurable share of a decode step)."""
    top = x.abs().amax(dim=1, keepdim=True).clamp_min_(ROW_FLOOR)  # (measured faster than one aminmax)
    return torch.round(x * (127 / top)).to(torch.int8), top.div_(127)


@functools.lru_cache(maxsize=1)
def fbgemm_works() -> bool:
    """Does this PyTorch build run `quantized::linear_dynamic` here? Asked once on a small layer."""
    try:
        probe = torch.linspace(-1, 1, 128).view(8, 16)  # not random: asking must not move the global RNG
        packed = fbgemm_pack(*quantize_weight(probe), None)
        torch.ops.quantized.linear_dynamic(probe[:2].contiguous(), packed, False)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def fbgemm_reduce_range() -> bool:
    """Does fbgemm need 7-bit activations here? Without VNNI its AVX2 kernel sums pairs of uint8 x int8 products in
    int16 (vpmaddubsw), which saturates at full 8-bit range (seen on an AVX2-only AMD EPYC: errors of 25% of the
    output); `reduce_range` halves the activations' range so that it cannot. Asked once: a product built to
    saturate (all activations at 255, all weights at 127), through the full range, against the exact value."""
    probe = torch.ones(8, 64)
    packed = fbgemm_pack(*quantize_weight(probe), None)
    exact = float(probe.shape[1])
    return abs(torch.ops.quantized.linear_dynamic(torch.ones(2, 64), packed, False)[0, 0].item() - exact) > 0.01 * exact


def default_backend() -> str:
    """(choice) per-row activation scales: fbgemm's one scale per tensor measured 0.74 log-prob mismatch per
    token against 0.20 per row without smoothing (0.32 against 0.11 with it). Per row through fbgemm where its op
    runs (`fbgemm_rows`: as fast as fbgemm on both CPUs measured, and the only fast one without VNNI), else
    `int_mm`."""
    return "fbgemm_rows" if fbgemm_works() else "int_mm"


@torch.no_grad()
def activation_maxima(model, ids: torch.Tensor, mask: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """max |x_j| over the real tokens of one forward pass, per input channel of each packed projection
    (keyed by (layer, name)) and of the head ((-1, "head")): the calibration of the smoothing."""
    maxima, hooks, real = {}, [], mask.bool()

    def recorder(key):
        def hook(module, args):
            x = args[0].detach().float()[real]  # [tokens, K]
            found = x.abs().amax(dim=0)
            maxima[key] = torch.maximum(maxima[key], found) if key in maxima else found

        return hook

    for index, layer in enumerate(model.model.layers):
        for name, attribute in PROJECTIONS.items():
            module = getattr(layer.self_attn, attribute, None) or getattr(layer.mlp, attribute)
            hooks.append(module.register_forward_pre_hook(recorder((index, name))))
    hooks.append(model.get_output_embeddings().register_forward_pre_hook(recorder((-1, "head"))))
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def smoothing_factors(activation_max: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s_j = max|X_j|^a / max|W_:j|^(1 - a), per input channel j (SmoothQuant's migration)."""
    weight_max = weight.detach().float().abs().amax(dim=0).clamp_min(1e-5)
    factors = activation_max.clamp_min(1e-5).pow(SMOOTHING_ALPHA) / weight_max.pow(1 - SMOOTHING_ALPHA)
    return factors.clamp_min(1e-5)


def fbgemm_pack(quantized: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    zero = torch.zeros(scale.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # the quantized tensor type is deprecated upstream; its kernel is what we use
        warnings.simplefilter("ignore")
        weight = torch._make_per_channel_quantized_tensor(quantized, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(weight, bias)


class Int8Linear:
    """y = x W^T + b with W in int8 (per-channel scales) and x quantised on the fly; x and y are float32."""

    def __init__(self, weight, bias, activation_max=None, folded: bool = False, backend: str | None = None):
        """`activation_max`: max |x_j| per input channel from calibration; None: no smoothing. `folded`: the owner
        multiplies 1/s into whatever produces the input (`inverse_smoothing`, see `load_layer`), so the call
        skips that multiply. `weight` None: built empty, for the owner's first `load`."""
        self.backend = backend or default_backend()
        self.activation_max, self.folded = activation_max, folded
        if self.backend not in BACKENDS:
            raise ValueError(f"int8 backend: got {self.backend!r}, expected one of {BACKENDS}")
        if weight is not None:
            self.load(weight, bias)

    def load(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """(Re)quantise from the model's current weight: after each optimizer step (the smoothing factors follow
        the new weight; the activation maxima stay those of the calibration). Without calibration 1/s is all ones."""
        weight = weight.detach().float()
        if self.activation_max is None:
            self.inverse_smoothing = torch.ones(weight.shape[1])
        else:
            factors = smoothing_factors(self.activation_max, weight)
            weight, self.inverse_smoothing = weight * factors, 1.0 / factors
        quantized, scale = quantize_weight(weight)
        self.bias = None if bias is None else bias.detach().float().clone()
        self.out_features = quantized.shape[0]
        if self.backend in ("fbgemm", "fbgemm_rows"):
            self.packed = None  # free the old packing before building the new one
            self.packed = fbgemm_pack(quantized, scale, self.bias if self.backend == "fbgemm" else None)
            # the packed weight is no tensor: a storage-free stand-in of its size lets `grpolab plan` count it
            self.packed_size = torch.empty(quantized.shape, dtype=torch.int8, device="meta")
        else:
            self.quantized_t, self.scale = quantized.t(), scale  # [K, N] view of the row-major int8 weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        if self.activation_max is not None and not self.folded:
            rows = rows * self.inverse_smoothing
        if self.backend == "fbgemm":
            y = torch.ops.quantized.linear_dynamic(rows.contiguous(), self.packed, fbgemm_reduce_range())
        elif self.backend == "fbgemm_rows":
            top = rows.abs().amax(dim=1, keepdim=True).clamp_min_(ROW_FLOOR)
            y = torch.ops.quantized.linear_dynamic(rows / top, self.packed, fbgemm_reduce_range()).mul_(top)
            if self.bias is not None:
                y.add_(self.bias)
        else:
            quantized, row_scale = quantize_rows(rows)
            y = torch._int_mm(quantized, self.quantized_t).float().mul_(row_scale).mul_(self.scale)
            if self.bias is not None:
                y.add_(self.bias)
        return y.view(*shape[:-1], self.out_features)


def load_layer(packed, linears: dict, input_norm: torch.Tensor, post_norm: torch.Tensor) -> None:
    """(Re)load one packed decoder layer's int8 projections (`linears`: decoder.layer_linears) with the smoothing
    folded in where that is exact: 1/s of qkv and of gate_up into the RMSNorm weights before them, 1/s of down into
    the up rows of gate_up (down's input is silu(gate) * up). The output projection's 1/s stays a multiply."""
    packed.down.load(*linears["down"])
    weight, bias = linears["gate_up"]
    half, inverse = weight.shape[0] // 2, packed.down.inverse_smoothing
    weight = torch.cat([weight[:half], weight[half:] * inverse[:, None]])
    bias = None if bias is None else torch.cat([bias[:half], bias[half:] * inverse])
    packed.gate_up.load(weight, bias)
    packed.qkv.load(*linears["qkv"])
    packed.out.load(*linears["out"])
    packed.input_norm.copy_(input_norm * packed.qkv.inverse_smoothing)
    packed.post_norm.copy_(post_norm * packed.gate_up.inverse_smoothing)
