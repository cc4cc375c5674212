"""The reward runner: weighted totals, in-process and worker-pool scoring, and failures."""

from __future__ import annotations

import os
import time

import pytest

from grpolab.errors import RewardError
from grpolab.rewards.runner import RewardRunner


def length_reward(completion, example):
    return float(len(completion))


def answer_reward(completion, example):
    return None if example.get("skip") else float(completion == example["answer"])


def hangs(completion, example):
    if completion == "hang":
        time.sleep(60)
    return 1.0


def raises(completion, example):
    if completion == "bad":
        raise KeyError("missing")
    return 1.0


def dies(completion, example):
    if completion == "die":
        os._exit(3)
    return 1.0


def two_values(completion, example):
    return (1.0, 2.0)


COMPLETIONS = ["7", "12", "7"]
EXAMPLES = [{"answer": "7"}, {"answer": "7"}, {"answer": "7", "skip": True}]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_weighted_total_skips_none(num_workers):
    functions = {"answer": answer_reward, "length": length_reward, "unused": raises}
    weights = {"answer": 1.0, "length": 0.5, "unused": 0.0}
    with RewardRunner(functions, weights, num_workers=num_workers) as runner:
        scores = runner.score(COMPLETIONS, EXAMPLES)
    assert scores.parts == {"answer": [1.0, 0.0, None], "length": [1.0, 2.0, 1.0]}
    assert scores.totals == [1.5, 1.0, 0.5]
    assert scores.errors == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_raising_function_stops_the_run_naming_function_and_row(num_workers):
    runner = RewardRunner({"raises": raises}, {"raises": 1.0}, num_workers=num_workers)
    with runner, pytest.raises(RewardError, match=r"reward 'raises' failed on row 1: KeyError"):
        runner.score(["ok", "bad"], [{}, {}])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_wrong_values_are_errors_and_zero_mode_counts_them(num_workers):
    runner = RewardRunner({"two": two_values}, {"two": 1.0}, num_workers=num_workers)
    with runner, pytest.raises(RewardError, match="reward 'two' failed on row 0: .*expected one finite number"):
        runner.score(["a"], [{}])
    with RewardRunner({"two": two_values, "raises": raises}, {"two": 1.0, "raises": 2.0}, "zero", 5, num_workers) as r:
        scores = r.score(["a", "bad"], [{}, {}])
    assert scores.errors == 3
    assert scores.parts == {"two": [0.0, 0.0], "raises": [2.0 / 2.0, 0.0]}
    assert scores.totals == [2.0, 0.0]


def test_a_hanging_function_is_stopped_at_its_time_limit_and_the_pool_recovers():
    with RewardRunner({"hangs": hangs}, {"hangs": 1.0}, "zero", timeout_seconds=1.0, num_workers=2) as runner:
        start = time.monotonic()
        scores = runner.score(["ok", "hang", "ok", "ok"], [{}] * 4)
        assert time.monotonic() - start < 30.0  # far below the 60 s hang, with room for a loaded machine
        assert scores.parts["hangs"] == [1.0, 0.0, 1.0, 1.0]
        assert scores.errors == 1
        assert runner.score(["ok"], [{}]).totals == [1.0]  # the killed worker was replaced
    runner = RewardRunner({"hangs": hangs}, {"hangs": 1.0}, timeout_seconds=1.0, num_workers=1)
    with runner, pytest.raises(RewardError, match="reward 'hangs' failed on row 0: took longer than 1 s"):
        runner.score(["hang"], [{}])


class Batched:
    def __init__(self, answer):
        self.answer = answer

    def batch(self, completions, examples):
        return self.answer(completions)

    def __call__(self, completion, example):
        raise AssertionError("batched functions are called once per batch")


def test_batched_functions_get_one_call_and_must_return_one_value_per_completion():
    runner = RewardRunner({"rm": Batched(lambda cs: [float(len(c)) for c in cs])}, {"rm": 2.0})
    assert runner.score(["a", "bcd"], [{}, {}]).totals == [2.0, 6.0]
    runner = RewardRunner({"rm": Batched(lambda cs: [1.0])}, {"rm": 1.0})
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        runner.score(["a", "b"], [{}, {}])


def test_a_worker_that_dies_is_replaced_and_its_row_is_an_error():
    with RewardRunner({"dies": dies}, {"dies": 1.0}, "zero", num_workers=1) as runner:
        scores = runner.score(["ok", "die", "ok"], [{}] * 3)
    assert scores.parts["dies"] == [1.0, 0.0, 1.0]
    assert scores.error_messages == ["reward 'dies' failed on row 1: the worker process died"]


def test_workers_die_on_sigterm_under_the_trainers_stop_handler():
    """The trainer's StopRequest turns SIGTERM into a flag; a forked worker inherited it and ignored SIGTERM,
    so interpreter exit (which terminates daemon workers) hung forever after a failed run."""
    import signal

    from grpolab.runs.folder import StopRequest

    with StopRequest():
        runner = RewardRunner({"hangs": hangs}, {"hangs": 1.0}, num_workers=1, timeout_seconds=30)
        runner.score(["ok"], [{}])
        worker = runner.workers[0].process
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(timeout=20)
        assert not worker.is_alive()
        runner.close()
