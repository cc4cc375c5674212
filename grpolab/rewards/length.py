"""Length rewards, on completion lengths in tokens. Pure Python: no torch.

`soft_overlong_punishment` is DAPO's R_len (ALGORITHMS.md section 3): 0 up to L_max - L_cache tokens,
then a linear ramp down to -1 at L_max, and -1 beyond. `length_penalty` is a plain linear cost,
-|y| / L_max, for runs that want shorter answers whatever their length (its weight sets the strength).
"""

from __future__ import annotations


def soft_overlong_punishment(length: int, max_length: int, buffer: int) -> float:
    """DAPO's R_len(y) for |y| = length, L_max = max_length, L_cache = buffer."""
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"overlong buffer must be in [0, max_length={max_length}], got {buffer}")
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / buffer
    return -1.0


def length_penalty(length: int, max_length: int) -> float:
    """-length / max_length: 0 for an empty completion, -1 at the length limit."""
    return -length / max_length
