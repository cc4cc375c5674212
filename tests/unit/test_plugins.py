"""The user's own code by import path (grpolab/plugins.py): reward functions and tasks."""

import textwrap

import pytest

from grpolab import plugins
from grpolab.config import load_config
from grpolab.errors import ConfigError, RewardError, TaskError
from grpolab.rewards.runner import RewardRunner, resolve_weights
from grpolab.tasks import get_task
from grpolab.tasks.arithmetic import ArithmeticTask

REWARDS = """
import time

def brevity(completion, example):
    return 1.0 if len(completion) < 10 else 0.0

def slow(completion, example):
    time.sleep(5)
    return 1.0

def wrong_arguments(completion):
    return 0.0

def correctness(completion, example):
    return 0.0

NOT_A_FUNCTION = 3
"""

TASK = """
from grpolab.tasks.arithmetic import ArithmeticTask

class ShortArithmetic(ArithmeticTask):
    name = "short-arithmetic"
    system_prompt = "Answer with the number only."

class NotATask:
    pass

class NeedsArguments(ArithmeticTask):
    def __init__(self, size):
        super().__init__()
"""


@pytest.fixture
def user_code(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    (tmp_path / "my_task.py").write_text(TASK)
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    return tmp_path


def test_a_file_spec_and_a_module_spec_load(user_code):
    brevity = plugins.load_object(f"{user_code}/my_rewards.py:brevity", "reward.functions.0")
    assert brevity("short", {}) == 1.0 and brevity("a much longer answer", {}) == 0.0
    assert plugins.load_object(f"{user_code}/my_rewards.py:slow", "k").__module__ == brevity.__module__  # loaded once
    import json

    assert plugins.load_object("json:dumps", "k") is json.dumps


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_rewards.py", "is not FILE.py:NAME or MODULE:NAME"),
        ("{dir}/missing.py:f", "no such file"),
        ("{dir}/my_rewards.py:nothing", "has no 'nothing'"),
        ("{dir}/broken.py:f", "importing {dir}/broken.py failed: RuntimeError: no GPU here"),
        ("no_such_package.rewards:f", "no module named 'no_such_package.rewards'"),
        ("python:brevity", "was passed in Python"),
    ],
)
def test_a_spec_that_cannot_load_is_one_line(user_code, spec, message):
    with pytest.raises(ConfigError) as error:
        plugins.load_object(spec.format(dir=user_code), "reward.functions.0")
    text = str(error.value)
    assert text.startswith("reward.functions.0: ") and message.format(dir=user_code) in text
    assert "\n" not in text


def test_python_specs_resolve_only_while_passed():
    def judge(completion, example):
        return 0.5

    with plugins.passed_in({"judge": judge}):
        assert plugins.load_object("python:judge", "k") is judge
    with pytest.raises(ConfigError, match="pass it again"):
        plugins.load_object("python:judge", "k")


def test_spec_of_records_an_import_path_only_when_it_finds_the_object_again():
    import json

    def local(completion, example):
        return 0.0

    assert plugins.spec_of(json.dumps) == "json:dumps"
    assert plugins.spec_of(local) == "python:local"
    assert plugins.spec_of(ArithmeticTask) == "grpolab.tasks.arithmetic:ArithmeticTask"
    assert plugins.spec_of(ArithmeticTask()) == "python:ArithmeticTask"  # an instance: only in this process


def test_config_records_file_specs_as_absolute_paths(user_code, monkeypatch):
    monkeypatch.chdir(user_code)
    config = load_config(None, ["reward.functions=my_rewards.py:brevity", "task=my_task.py:ShortArithmetic"])
    assert config.reward.functions == [f"{user_code}/my_rewards.py:brevity"]
    assert config.task == f"{user_code}/my_task.py:ShortArithmetic"
    assert load_config(None, ["reward.functions=[json:dumps]"]).reward.functions == ["json:dumps"]


def reward_config(*specs, **weights):
    overrides = [f"reward.functions=[{', '.join(specs)}]"] + [f"reward.weights.{k}={v}" for k, v in weights.items()]
    return load_config(None, overrides).reward


def test_user_rewards_join_the_task_with_weight_one_and_can_be_weighted(user_code):
    config = reward_config(f"{user_code}/my_rewards.py:brevity", brevity=0.25)
    task = get_task("arithmetic", config)
    assert "brevity" in task.reward_functions() and task.added_rewards() == ["brevity"]
    assert resolve_weights(task, {}) == {"correctness": 1.0, "format": 0.0, "brevity": 1.0}
    weights = resolve_weights(task, config.weights)
    assert weights == {"correctness": 1.0, "format": 0.0, "brevity": 0.25}
    runner = RewardRunner(task.reward_functions(), weights, num_workers=1)
    try:
        scores = runner.score(["7", "the answer is 7 of course"], [{"question": "3+4", "answer": "7"}] * 2)
    finally:
        runner.close()
    assert scores.parts["brevity"] == [1.0, 0.0]
    assert scores.totals == [1.25, 1.0]


def test_user_rewards_run_in_the_workers_with_the_time_limit(user_code):
    config = reward_config(f"{user_code}/my_rewards.py:slow")
    task = get_task("arithmetic", config)
    runner = RewardRunner(task.reward_functions(), resolve_weights(task, {}), timeout_seconds=0.5, num_workers=1)
    try:
        with pytest.raises(RewardError, match="slow"):
            runner.score(["7"], [{"question": "3+4", "answer": "7"}])
    finally:
        runner.close()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wrong_arguments", "must take (completion: str, example: dict)"),
        ("correctness", "a reward named 'correctness' exists already"),
        ("NOT_A_FUNCTION", "is a int, not a function"),
    ],
)
def test_a_reward_function_that_cannot_be_used_is_refused(user_code, name, message):
    task = get_task("arithmetic", reward_config(f"{user_code}/my_rewards.py:{name}"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task.reward_functions()


def test_a_task_class_by_file_or_module(user_code):
    task = get_task(f"{user_code}/my_task.py:ShortArithmetic")
    assert task.name == "short-arithmetic" and task.system_prompt == "Answer with the number only."
    assert isinstance(get_task("grpolab.tasks.arithmetic:ArithmeticTask"), ArithmeticTask)


@pytest.mark.parametrize(
    ("name", "message"),
    [("NotATask", "is not a subclass of grpolab.tasks.Task"), ("NeedsArguments", "cannot be built with no arguments")],
)
def test_a_task_spec_that_is_not_a_task_is_refused(user_code, name, message):
    with pytest.raises(TaskError, match=message):
        get_task(f"{user_code}/my_task.py:{name}")


def test_builtin_tasks_keep_their_names():
    assert plugins.is_spec("my_task.py:MyTask") and plugins.is_spec("mypkg.tasks:MyTask")
    assert not plugins.is_spec("jsonl:data/train.jsonl") and not plugins.is_spec("gsm8k:/data/gsm8k")
    with pytest.raises(TaskError, match="your own: FILE.py:CLASS or MODULE:CLASS"):
        get_task("no-such-task")


def test_a_file_can_import_its_neighbours(tmp_path):
    (tmp_path / "helpers_for_reward.py").write_text("def length(text):\n    return len(text)\n")
    (tmp_path / "uses_helper.py").write_text(
        textwrap.dedent(
            """
            from helpers_for_reward import length

            def short(completion, example):
                return float(length(completion) < 5)
            """
        )
    )
    short = plugins.load_object(f"{tmp_path}/uses_helper.py:short", "k")
    assert short("abc", {}) == 1.0
