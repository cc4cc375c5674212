"""Code rewards: build the program a completion stands for, run it against the task's tests in the
sandbox (`grpolab.rewards.sandbox`), score 1.0 when every test passes (or the fraction passing). No torch.

HumanEval's convention: the program is prompt + completion, then the tests, then `check(entry_point)`.
Here the program runs in the sandbox's candidate process and the tests in its checker (see
`grpolab.rewards.sandbox`): the tests call the entry point through a proxy, and the helpers the tests take
from the prompt (`poly` in HumanEval/32, `encode_cyclic` in 38, `encode_shift` in 50) are defined in the
checker from the prompt itself (`trusted_setup`), so a completion that redefines them changes nothing.
Two departures for chat models, which rarely continue a prompt verbatim: a fenced code block in the
completion is used when present (the first one that defines the entry point, else the first one), and
when the code defines the entry-point function itself the prompt is not prepended, only the prompt's
import lines (`from typing import List` is in the prompt, not in most full solutions).

`SandboxedTests` is the code reward as the reward runner's batched kind: it runs in the trainer's process
and starts up to `concurrency` sandboxes at once from threads (each sandbox is a process with its own
time, memory and process limits, so a worker process would add nothing but a copy of the trainer), and
it remembers recent results so that the task's answer check after the reward does not run the program
a second time.
"""

from __future__ import annotations

import ast
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from grpolab.rewards.sandbox import SandboxLimits, SandboxResult, run_python

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


def trusted_setup(prompt: str, entry_point: str) -> str:
    """The prompt's code without the entry point's stub: its imports and helpers, for the checker. A prompt
    that does not parse gives only its import lines."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return import_lines(prompt)
    tree.body = [
        node
        for node in tree.body
        if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point)
    ]
    return ast.unparse(tree)


def sandboxed_tests_reward(
    program: str, tests: list[str], limits: SandboxLimits | None = None, partial: bool = False, setup: str = ""
) -> float:
    """1.0 when all tests pass (0.0 otherwise), or with `partial` the fraction of tests passing."""
    result = run_python(program, tests, limits, setup)
    if partial:
        return result.fraction
    return 1.0 if result.status == "passed" else 0.0


class SandboxedTests:
    """A batched code reward (module docstring). `build(completion, example)` gives (program, tests) or
    (program, tests, setup), setup being trusted code the tests need (`trusted_setup`)."""

    batched = True

    def __init__(
        self,
        build: Callable[[str, dict], tuple],
        limits: SandboxLimits | None = None,
        partial: bool = False,
        concurrency: int = 2,
        remembered: int = 4096,
    ):
        self.build = build
        self.limits = limits or SandboxLimits()
        self.partial = partial
        self.concurrency = max(1, concurrency)
        self.remembered = remembered
        self.results: OrderedDict[tuple, SandboxResult] = OrderedDict()
        self.lock = threading.Lock()

    def result(self, completion: str, example: dict) -> SandboxResult:
        program, tests, *rest = self.build(completion, example)
        setup = rest[0] if rest else ""
        key = (program, tuple(tests), setup)
        with self.lock:
            if key in self.results:
                self.results.move_to_end(key)
                return self.results[key]
        result = run_python(program, tests, self.limits, setup)
        with self.lock:
            self.results[key] = result
            while len(self.results) > self.remembered:
                self.results.popitem(last=False)
        return result

    def value(self, result: SandboxResult) -> float:
        if self.partial:
            return result.fraction
        return 1.0 if result.status == "passed" else 0.0

    def batch(self, completions: list[str], examples: list[dict]) -> list[float]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return [self.value(r) for r in pool.map(self.result, completions, examples)]

    def __call__(self, completion: str, example: dict) -> float:
        return self.value(self.result(completion, example))
