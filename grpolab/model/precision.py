"""What the machine can do: bf16 support on CPUs (AMX or AVX-512-BF16) and GPUs."""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16, where oneDNN runs bf16 matmuls natively."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_bf16(precision: str, device: torch.device | None = None) -> bool:
    """Resolve a `precision` / `dtype` setting of auto | bf16 | fp32."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    device = device or default_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def autocast_context(bf16: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
