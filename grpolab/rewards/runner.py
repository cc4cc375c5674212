"""The reward runner: scores completions with several named reward functions and combines them.

The total is the weighted sum of the non-None values (None: "does not apply", ALGORITHMS.md section 1);
each function's values are kept for logging (`rewards/<name>`). Where each function runs:

- functions marked `cheap` (pure string work) run in this process: a round trip to a worker costs more
  than the work (measured on 2 shared cores: the R1 format check takes 0.001 ms a row here, 0.19 ms a
  row through 2 workers);
- functions with a `batch` method (the reward model; the code reward, which runs its sandboxes, each a
  process with its own limits, from threads) run here too, one call for the whole batch;
- every other function (math-verify) runs in a pool of forked worker processes, one call at a time
  each, with a wall-clock limit per call; a worker that overruns or dies is replaced. `num_workers=0`
  runs everything here, without time limits (math-verify still bounds its own parses).

A function that raises, overruns its time limit or returns something other than one number (or None) per
completion stops the run with a `RewardError` naming the function and the row, or, with
`on_error="zero"`, scores 0 and is counted (`RewardScores.errors`, logged as `reward_errors`).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from grpolab.errors import ConfigError, RewardError


@dataclass
class RewardScores:
    totals: list[float]
    parts: dict[str, list[float | None]]
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)


def cheap(function: Callable) -> Callable:
    """Mark a reward function as pure string work, scored in this process (module docstring)."""
    function.cheap = True
    return function


def resolve_weights(task, overrides: dict[str, float]) -> dict[str, float]:
    """The task's default weights and 1 for each of the user's `reward.functions`, with the config's
    `reward.weights` applied; unknown names are errors."""

    weights = {**task.default_weights(), **{name: 1.0 for name in task.added_rewards()}}
    functions = task.reward_functions()
    for name, weight in overrides.items():
        if name not in functions:
            allowed = ", ".join(functions)
            raise ConfigError(f"reward.weights.{name}: task {task.name!r} has no such reward (allowed: {allowed})")
        weights[name] = weight
    return weights


def check_value(value) -> float | None:
    """One reward value: a finite number or None; anything else is the function's error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"returned {value!r}, expected one finite number or None")
    return float(value)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")


def worker_loop(functions: dict[str, Callable], connection) -> None:
    """Runs in a forked worker: (name, completion, example) in, ("ok", value) or ("error", text) out.
    The fork inherits the trainer's stop handler, which would turn SIGTERM into a no-op here and leave the
    parent waiting forever for a worker to exit: a worker dies on SIGTERM, and leaves Ctrl-C to the parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            name, completion, example = connection.recv()
        except EOFError:
            return
        try:
            reply = ("ok", check_value(functions[name](completion, example)))
        except Exception as error:  # the function's own failure, reported to the parent
            reply = ("error", describe(error) or traceback.format_exc(limit=1))
        connection.send(reply)


class Worker:
    def __init__(self, functions: dict[str, Callable]):
        # the fork inherits the functions (closures need no pickling); a tokenizer that ran threads in the parent
        # would warn in every child about disabling them, on the user's terminal
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        context = multiprocessing.get_context("fork")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=worker_loop, args=(functions, child), daemon=True)
        self.process.start()
        child.close()
        self.job: tuple[str, int] | None = None
        self.started = 0.0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.connection.close()


class RewardRunner:
    def __init__(
        self,
        functions: dict[str, Callable],
        weights: dict[str, float],
        on_error: str = "raise",
        timeout_seconds: float = 30.0,
        num_workers: int = 2,
    ):
        self.functions = {name: f for name, f in functions.items() if weights.get(name, 0.0) != 0.0}
        self.weights = weights
        self.on_error = on_error
        self.timeout_seconds = timeout_seconds
        self.num_workers = num_workers
        self.workers: list[Worker] = []

    def pooled(self) -> list[str]:
        if self.num_workers == 0:
            return []
        return [n for n, f in self.functions.items() if not getattr(f, "cheap", False) and not hasattr(f, "batch")]

    def score(self, completions: list[str], examples: list[dict]) -> RewardScores:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        scores = RewardScores(totals=[], parts={name: [None] * len(completions) for name in self.functions})
        pooled = self.pooled()
        for name, function in self.functions.items():
            if name in pooled:
                continue
            if hasattr(function, "batch"):
                self.score_batched(name, function, completions, examples, scores)
            else:
                for row, (completion, example) in enumerate(zip(completions, examples)):
                    try:
                        scores.parts[name][row] = check_value(function(completion, example))
                    except Exception as error:
                        self.fail(scores, name, row, describe(error))
        if pooled:
            self.score_pooled(pooled, completions, examples, scores)
        for row in range(len(completions)):
            values = [(self.weights[n], v[row]) for n, v in scores.parts.items() if v[row] is not None]
            scores.totals.append(float(sum(w * v for w, v in values)))
        return scores

    def score_batched(self, name, function, completions, examples, scores: RewardScores) -> None:
        try:
            values = list(function.batch(completions, examples))
        except Exception as error:
            values = [None] * len(completions)
            for row in range(len(completions)):
                self.fail(scores, name, row, describe(error))
            return
        if len(values) != len(completions):
            for row in range(len(completions)):
                self.fail(scores, name, row, f"returned {len(values)} values for {len(completions)} completions")
            return
        for row, value in enumerate(values):
            try:
                scores.parts[name][row] = check_value(value)
            except TypeError as error:
                self.fail(scores, name, row, str(error))

    def fail(self, scores: RewardScores, name: str, row: int, message: str) -> None:
        line = f"reward {name!r} failed on row {row}: {message}"
        if self.on_error != "zero":
            raise RewardError(line)
        scores.parts[name][row] = 0.0
        scores.errors += 1
        scores.error_messages.append(line)

    def score_pooled(self, names: list[str], completions, examples, scores: RewardScores) -> None:
        jobs = [(name, row) for name in names for row in range(len(completions))]
        jobs.reverse()  # popped from the end: rows in order
        # on_error="raise": a failure stops new calls, the calls in flight finish, and the failure first in job
        # order is raised: the same one whichever worker answers first (as the sequential path would raise)
        failures: list[tuple[tuple[int, int], str, int, str]] = []
        if self.on_error == "zero":
            fail = self.fail
        else:
            fail = lambda scores, name, row, message: failures.append(((names.index(name), row), name, row, message))
        while len(self.workers) < min(self.num_workers, len(jobs)):
            self.workers.append(Worker(self.functions))
        try:
            while (jobs and not failures) or any(w.job for w in self.workers):
                for worker in self.workers:
                    if worker.job is None and jobs and not failures:
                        worker.job = jobs.pop()
                        worker.started = time.monotonic()
                        name, row = worker.job
                        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                            # a dead worker: its pipe reads as closed below, and it is replaced there
                            worker.connection.send((name, completions[row], examples[row]))
                busy = [w for w in self.workers if w.job]
                deadline = min(w.started for w in busy) + self.timeout_seconds
                ready = wait([w.connection for w in busy], timeout=max(0.0, deadline - time.monotonic()))
                for index, worker in enumerate(self.workers):
                    if worker.job is None:
                        continue
                    name, row = worker.job
                    if worker.connection in ready:
                        self.collect(worker, name, row, scores, fail)
                    elif time.monotonic() - worker.started >= self.timeout_seconds:
                        worker.job = None
                        worker.stop()  # the only way to stop a hung call
                        self.workers[index] = Worker(self.functions)
                        fail(scores, name, row, f"took longer than {self.timeout_seconds:g} s")
            if failures:
                _, name, row, message = min(failures)
                self.fail(scores, name, row, message)  # raises
        except BaseException:
            self.close()  # a worker may still be busy with a call whose answer nobody will read
            raise

    def collect(self, worker: Worker, name: str, row: int, scores: RewardScores, fail) -> None:
        worker.job = None
        try:
            status, value = worker.connection.recv()
        except (EOFError, OSError):
            worker.stop()
            self.workers[self.workers.index(worker)] = Worker(self.functions)
            fail(scores, name, row, "the worker process died")
            return
        if status == "ok":
            scores.parts[name][row] = value
        else:
            fail(scores, name, row, value)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
