"""Process-wide malloc settings for large tensors (no torch import: the CLI calls this before anything else)."""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Serve large blocks from glibc's heap instead of a fresh mmap each time (Linux, glibc; returns whether set).

    PyTorch's CPU allocator keeps no cache: every large temporary (a 113 MB embedding gradient, 50 MB logit chunks)
    is a new mmap whose pages fault in on first touch, and is unmapped on free. Measured here: `torch.empty` + fill
    of 50 MB took 29.7 ms with the default and 1.7 ms from the heap. On a SmolLM2 GRPO step (2 threads, two processes
    each, alternating) the policy pass took 7.0 s against 8.6 s and the step 13.2 s against 14.1 s. The cost: freed
    memory stays with the process and fragments: peak RSS 5.17 against 5.00 GB.
    `GRPOLAB_MALLOC=default` leaves malloc as it is."""
    if os.environ.get("GRPOLAB_MALLOC", "heap") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to set
        return False
