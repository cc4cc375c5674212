"""Code rewards: build the program a completion stands for, run it against the task's tests in the
sandbox (`grpolab.rewards.sandbox`), score 1.0 when every test passes (or the fraction passing). No torch.

HumanEval's convention: the program is prompt + completion, then the tests, then `check(entry_point)`.
Two departures for chat models, which rarely continue a prompt verbatim: a fenced code block in the
completion is used when present (the first one that defines the entry point, else the first one), and
when the code defines the entry-point function itself the prompt is not prepended, only the prompt's
import lines (`from typing import List` is in the prompt, not in most full solutions).
"""

from __future__ import annotations

import re

from grpolab.rewards.sandbox import SandboxLimits, run_python

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
IMPORT_LINE = re.compile(r"^(?:import\s+\S|from\s+\S+\s+import\s)")


def defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, flags=re.MULTILINE) is not None


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The fenced code block of a completion (see module docstring), else the completion itself."""
    blocks = FENCE.findall(completion)
    if not blocks:
        return completion
    if entry_point:
        for block in blocks:
            if defines(block, entry_point):
                return block
    return blocks[0]


def import_lines(prompt: str) -> str:
    return "".join(line + "\n" for line in prompt.splitlines() if IMPORT_LINE.match(line))


def humaneval_program(prompt: str, completion: str, entry_point: str) -> str:
    """The program to test for a HumanEval-style completion (see module docstring)."""
    code = extract_code(completion, entry_point)
    if defines(code, entry_point):
        return import_lines(prompt) + code
    return prompt + code


def sandboxed_tests_reward(
    program: str, tests: list[str], limits: SandboxLimits | None = None, partial: bool = False
) -> float:
    """1.0 when all tests pass (0.0 otherwise), or with `partial` the fraction of tests passing."""
    result = run_python(program, tests, limits)
    if partial:
        return result.fraction
    return 1.0 if result.status == "passed" else 0.0
