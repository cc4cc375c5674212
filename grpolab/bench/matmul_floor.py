"""The matrix-product floor of a training step (`grpolab bench step --floor`): how long the step's matrix
products alone take on this machine.

`MatmulRecorder` watches one step at the dispatcher (a `TorchDispatchMode`, so the backward pass is seen
too) and counts every matrix product by signature: operator, operand shapes, strides and dtypes, and the
phase it ran in (`Timer.current` on grpolab's side). `time_matmuls` then runs each signature on random
operands of the same layout, `repeats` times after one warm-up call, and multiplies the fastest time by
the count (a floor should not include the machine's noise, which only ever adds). The sum is a floor for
the step on this machine: a step that did nothing but these products, each at the speed it reaches alone
with warm caches, would take that long. Attention kernels (SDPA) and all
element-wise work are left out, so the floor is below what any implementation of the same products
could reach.

Counted: aten mm, addmm, bmm, baddbmm and oneDNN's prepacked linear (the engine's bf16 decode path), on
the device they ran on (on a GPU each timing waits for the device, so a small product's time includes its
launch). Not counted: products that run outside this process (vLLM's generation workers).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grpolab.engine.decoder import Linear

MATMULS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default"}
ONEDNN_LINEAR = "mkldnn._linear_pointwise.default"


def layout(tensor: torch.Tensor) -> tuple:
    """What `time_matmuls` needs to rebuild an operand: shape, strides (None for oneDNN's opaque layout), dtype,
    device."""
    strides = None if tensor.layout == torch._mkldnn else tuple(tensor.stride())
    return tuple(tensor.shape), strides, tensor.dtype, str(tensor.device)


def matmul_flops(op: str, operands: tuple) -> int:
    """2 m k n (times the batch) multiply-adds of one product, from its operands' shapes."""
    shapes = [operand[0] for operand in operands]
    if op == ONEDNN_LINEAR:  # x [..., k], weight [n, k]
        x, weight = shapes[0], shapes[1]
        return 2 * math.prod(x[:-1]) * x[-1] * weight[0]
    first, second = shapes[-2], shapes[-1]  # addmm / baddbmm: the bias comes first
    return 2 * math.prod(first) * second[-1]


class MatmulRecorder(TorchDispatchMode):
    """Counts the matrix products run while active, by (phase, operator, operands)."""

    def __init__(self, phase=lambda: None):
        super().__init__()
        self.phase = phase
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in MATMULS:
            operands = args[:3] if name.startswith(("aten.addmm", "aten.baddbmm")) else args[:2]
            self.counts[(self.phase() or "other", name, tuple(layout(t) for t in operands), self.scalars(kwargs))] += 1
        elif name == ONEDNN_LINEAR:
            bias = args[2]
            self.counts[(self.phase() or "other", name, (layout(args[0]), layout(args[1])), bias is not None)] += 1
        return func(*args, **(kwargs or {}))

    @staticmethod
    def scalars(kwargs) -> tuple:
        return tuple(sorted((kwargs or {}).items()))


def random_operand(shape, strides, dtype, device) -> torch.Tensor:
    if strides is None:
        return torch.randn(shape, device=device).to(dtype)
    # a buffer as large as the strided view reaches, so transposed operands keep their layout
    extent = 1 + sum((size - 1) * stride for size, stride in zip(shape, strides)) if all(shape) else 0
    return torch.randn(extent, device=device).to(dtype).as_strided(shape, strides)


FUNCTIONS = {
    "aten.mm.default": torch.mm,
    "aten.addmm.default": torch.addmm,
    "aten.bmm.default": torch.bmm,
    "aten.baddbmm.default": torch.baddbmm,
}


def product(name: str, operands: tuple, extra):
    """A closure that runs the recorded product once on fresh random operands of the same layout."""
    tensors = [random_operand(*operand) for operand in operands]
    if name == ONEDNN_LINEAR:  # the weight was recorded in oneDNN's layout: reorder a plain one as the engine does
        (shape, _, dtype, _), (x, plain) = operands[1], tensors
        weight = torch.ops.mkldnn._reorder_linear_weight(plain, Linear.ROWS_HINT)
        bias = torch.randn(shape[0]).to(dtype) if extra else None
        return lambda: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    function, kwargs = FUNCTIONS[name], dict(extra)
    return lambda: function(*tensors, **kwargs)


def synchronize(device: str) -> None:
    """Wait for a GPU's queued work, so that a timer around it measures the work, not its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_matmuls(counts: Counter, repeats: int = 5) -> dict:
    """Seconds (the fastest of `repeats` runs, times the count) and FLOPs of the recorded products, in total and
    by phase (see the module docstring)."""
    by_phase: dict[str, float] = {}
    flops: dict[str, int] = {}
    for (phase, name, operands, extra), count in counts.items():
        run, device = product(name, operands, extra), operands[0][3]
        run()  # warm-up: oneDNN primitive creation, first-touch of the output
        seconds = []
        for _ in range(repeats):
            synchronize(device)
            begin = time.perf_counter()
            run()
            synchronize(device)
            seconds.append(time.perf_counter() - begin)
        by_phase[phase] = by_phase.get(phase, 0.0) + count * min(seconds)
        flops[phase] = flops.get(phase, 0) + count * matmul_flops(name, operands)
    return {
        "seconds": sum(by_phase.values()),
        "tflop": sum(flops.values()) / 1e12,
        "products": sum(counts.values()),
        "by_phase": dict(sorted(by_phase.items())),
        "tflop_by_phase": {phase: flops[phase] / 1e12 for phase in sorted(flops)},
    }
