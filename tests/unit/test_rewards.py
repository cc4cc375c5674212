"""The reward functions against hand-checked cases."""

from __future__ import annotations

import pytest

from grpolab.rewards.code import extract_code, humaneval_program
from grpolab.rewards.format import r1_format_partial, r1_format_strict
from grpolab.rewards.language import language_consistency, words
from grpolab.rewards.length import length_penalty, soft_overlong_punishment
from grpolab.rewards.math import answer_span, last_boxed, math_correctness


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{\\dfrac{\\sqrt{2}}{2}}", "\\frac{\\sqrt2}{2}", 1.0),
        ("<answer>18 dollars</answer>", "18", 1.0),
        ("<answer>\\$18.00</answer>", "18", 1.0),
        ("She makes $18.\n#### 1,234", "1234", 1.0),
        ("The total is 42.", "42", 1.0),
        ("\\boxed{x^2+1}", "1+x^2", 1.0),
        ("\\boxed{(1,2)}", "(1,2)", 1.0),
        ("\\boxed{10\\%}", "10", 1.0),
        ("#### 5", "6", 0.0),
        ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
        ("I do not know", "3", 0.0),
        ("", "3", 0.0),
    ],
)
def test_math_correctness(completion, reference, expected):
    assert math_correctness(completion, reference) == expected


def test_answer_span_prefers_boxed_then_tags_then_hashes_then_last_number():
    assert last_boxed("a \\boxed{\\frac{a}{b}} b") == "\\frac{a}{b}"
    assert answer_span("1 \\boxed{2} <answer>3</answer>") == "2"
    assert answer_span("1 <answer> 3 </answer> 4") == "3"
    assert answer_span("x 7 #### 8") == "8"
    assert answer_span("1 then 2, then 3.") == "3"
    assert answer_span("no numbers") is None


@pytest.mark.parametrize(
    "completion, strict, partial",
    [
        ("<think>a</think> <answer>b</answer>", 1.0, 1.0),
        ("  <think>\nx\n</think>\n<answer>42</answer>\n", 1.0, 1.0),
        ("<think>a</think> text <answer>b</answer>", 0.0, 1.0),
        ("<think>a <think> b</think><answer>c</answer>", 0.0, 0.75),
        ("<answer>b</answer>", 0.0, 0.5),
        ("plain", 0.0, 0.0),
    ],
)
def test_r1_format(completion, strict, partial):
    assert r1_format_strict(completion) == strict
    assert r1_format_partial(completion) == partial


def test_language_consistency_counts_words_by_script():
    assert words("Let x be 3 \\frac{a}{b} 数学") == ["Let", "x", "be", "a", "b", "数", "学"]
    assert language_consistency("<think>two plus two</think><answer>4</answer>", "en") == 1.0
    assert language_consistency("<think>two 加 two 是</think>", "en") == 0.5
    assert language_consistency("<think>二加二 equals</think>", "zh") == 0.75
    assert language_consistency("<think>1 + 2</think>", "en") is None
    with pytest.raises(ValueError, match="unknown language"):
        language_consistency("x", "xx")


@pytest.mark.parametrize("length, expected", [(0, 0.0), (80, 0.0), (90, -0.5), (100, -1.0), (101, -1.0)])
def test_soft_overlong_punishment_is_dapos_ramp(length, expected):
    assert soft_overlong_punishment(length, max_length=100, buffer=20) == pytest.approx(expected)


def test_length_penalty():
    assert length_penalty(0, 100) == 0.0
    assert length_penalty(25, 100) == -0.25


def test_humaneval_program_assembly():
    prompt = 'from typing import List\n\n\ndef f(x: List[int]) -> int:\n    """doc"""\n'
    assert humaneval_program(prompt, "    return 1\n", "f") == prompt + "    return 1\n"
    fenced = "Here:\n```python\ndef f(x):\n    return 2\n```\nDone."
    assert humaneval_program(prompt, fenced, "f") == "from typing import List\ndef f(x):\n    return 2\n"
    assert extract_code("```py\nhelper = 1\n```\n```python\ndef f():\n    pass\n```", "f") == "def f():\n    pass\n"
    assert extract_code("no fence") == "no fence"
