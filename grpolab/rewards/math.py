"""Rule-based correctness of a final numeric answer. Pure Python: no torch.

The answer of a completion is, in order of preference: the content of `\\boxed{...}`, of
`<answer>...</answer>`, after GSM8K's `#### `, else the last number in the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands separators removed (`1,234` -> `1234`)."""
    matches = NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "").rstrip(".")


def extract_answer(text: str) -> str | None:
    """The final answer span of a completion (see module docstring), reduced to its last number."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        return last_number(boxed[-1]) or boxed[-1].strip()
    tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    if tagged:
        return last_number(tagged[-1]) or tagged[-1].strip()
    if "####" in text:
        return last_number(text.rsplit("####", 1)[1])
    return last_number(text)


def to_number(text: str | None) -> Fraction | None:
    if text is None:
        return None
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(predicted: str | None, reference: str | int | float) -> bool:
    left, right = to_number(predicted), to_number(str(reference))
    return left is not None and right is not None and left == right


def number_correctness(completion: str, answer: str | int) -> float:
    """1.0 when the completion's final answer equals the reference number, else 0.0."""
    return 1.0 if numbers_equal(extract_answer(completion), answer) else 0.0
