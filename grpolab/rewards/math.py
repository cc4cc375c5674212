"""Rule-based correctness of a final answer. Pure Python: no torch.

The answer of a completion is, in order of preference: the content of the last `\\boxed{...}`, of
`<answer>...</answer>`, after GSM8K's `#### `, else the last number in the text.

`number_correctness` compares numbers exactly (the arithmetic task). `math_correctness` compares
mathematical expressions with the `math-verify` library (fractions, LaTeX, intervals, symbolic
equality): the answer span is parsed both as LaTeX and as plain text, and a span holding exactly one
number ("18 dollars", "$1,234") is also compared as that number, which is how units and thousands
separators are dropped. math-verify's own time limit (SIGALRM, whole seconds) bounds each parse and check
in the main thread; elsewhere the caller's time limit applies (the reward runner's).
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands separators removed (`1,234` -> `1234`)."""
    matches = NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "").rstrip(".")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    position = text.index("{", start) + 1
    depth = 1
    for index in range(position, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[position:index].strip()
    return None


def answer_span(text: str) -> str | None:
    """The final answer as written (see module docstring), not reduced to a number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    if tagged:
        inner = last_boxed(tagged[-1])
        return inner if inner is not None else tagged[-1].strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    return last_number(text)


def parse_expression(text: str, timeout: int | None) -> list:
    """math-verify parses of `text` as LaTeX and as plain text (an empty list when neither parses)."""
    from math_verify import parse

    parsed = []
    for variant in (f"${text}$", text):
        parsed.extend(parse(variant, parsing_timeout=timeout) or [])
    return parsed


def math_equal(predicted: str, reference: str, timeout_seconds: int = 5) -> bool:
    """Whether two answer spans denote the same mathematical object (math-verify)."""
    left, right = to_number(predicted.strip()), to_number(reference.strip())
    if left is not None and right is not None:  # two plain numbers: exact, no parsing needed
        return left == right
    from math_verify import verify  # imported here: sympy costs about a second to import

    timeout = timeout_seconds if threading.current_thread() is threading.main_thread() else None
    references = parse_expression(reference, timeout)
    candidates = [predicted]
    numbers = NUMBER.findall(predicted)
    if len(numbers) == 1:  # units, currency signs and thousands separators around a single number
        candidates.append(numbers[0].replace(",", ""))
    for candidate in candidates:
        parsed = parse_expression(candidate, timeout)
        if parsed and references and verify(references, parsed, timeout_seconds=timeout):
            return True
    return False


def math_correctness(completion: str, reference: str, timeout_seconds: int = 5) -> float:
    """1.0 when the completion's final answer equals the reference (see module docstring), else 0.0."""
    span = answer_span(completion)
    if not span:
        return 0.0
    return 1.0 if math_equal(span, str(reference), timeout_seconds) else 0.0


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
