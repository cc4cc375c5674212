"""Your own reward, task and data as a user brings them: from files outside the repository, through the command
line and through the Python API, trained, resumed, evaluated and reported (grpolab/plugins.py, grpolab/api.py)."""

import json

import pytest
import yaml

import grpolab
from grpolab.errors import ConfigError
from tests.conftest import TINY, run_cli

SHORT = [*TINY, "train.max_steps=2", "eval.n=4"]
ANY_TASK = [item for item in SHORT if not item.startswith("reward.weights.format")]  # format: arithmetic's

REWARDS = """
def brevity(completion: str, example: dict) -> float:
    return 1.0 if len(completion) < 24 else 0.0
"""

TASK = """
from grpolab.tasks.arithmetic import ArithmeticTask

class TerseArithmetic(ArithmeticTask):
    name = "terse-arithmetic"
    system_prompt = "Reply with the number only."
"""


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def user_code(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "my_rewards.py").write_text(REWARDS)
    (folder / "my_task.py").write_text(TASK)
    return folder


def test_a_reward_from_a_file_is_trained_resumed_evaluated_and_reported(user_code, tmp_path):
    run_dir = tmp_path / "run"
    train = ["train", *SHORT, "reward.functions=[my_rewards.py:brevity]", "reward.weights.brevity=0.5"]
    run_cli(*train, f"output_dir={run_dir}", cwd=user_code, check=True)  # the file named relative to the cwd
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["reward"]["functions"] == [f"{user_code}/my_rewards.py:brevity"]
    assert saved["reward"]["weights"]["brevity"] == 0.5
    assert all("rewards/brevity" in record for record in metrics(run_dir))
    # from the repository root, not the file's folder: config.yaml finds the file by its absolute path
    run_cli("train", "--resume", str(run_dir), "train.max_steps=3", check=True)
    assert [record["step"] for record in metrics(run_dir)] == [1, 2, 3]
    out = tmp_path / "eval"
    run_cli("eval", f"model={run_dir / 'final'}", "n=4", "max_new_tokens=8", f"output_dir={out}", check=True)
    assert json.loads((out / "eval.json").read_text())["n"] == 4
    run_cli("report", str(run_dir), check=True)
    assert "brevity" in (run_dir / "report.md").read_text()


def test_a_task_class_from_a_file_trains_and_evaluates(user_code, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", *SHORT, f"task={user_code}/my_task.py:TerseArithmetic", f"output_dir={run_dir}", check=True)
    out = tmp_path / "eval"
    task = f"task={user_code}/my_task.py:TerseArithmetic"
    run_cli("eval", f"model={run_dir / 'final'}", task, "n=4", "max_new_tokens=8", f"output_dir={out}", check=True)
    assert json.loads((out / "eval.json").read_text())["task"].endswith("my_task.py:TerseArithmetic")


def test_a_bad_plugin_is_one_line_and_touches_nothing(user_code, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "train", *SHORT, "reward.functions=[my_rewards.py:nothing]", f"output_dir={run_dir}", cwd=user_code
    )
    assert result.returncode == 2 and not run_dir.exists()
    assert result.stderr.strip().splitlines() == [
        f"grpolab train: error: reward.functions.0: {user_code}/my_rewards.py has no 'nothing'"
    ]


def overrides_as_dict(overrides):
    return dict(item.split("=", 1) for item in overrides)


def test_the_python_api_takes_a_callable_and_a_resume_needs_it_again(tmp_path):
    def short_answer(completion: str, example: dict) -> float:
        return float(len(completion) < 24)

    config = {**overrides_as_dict(SHORT), "output_dir": str(tmp_path / "run"), "log.quiet": True}
    config = {key: yaml.safe_load(value) if isinstance(value, str) else value for key, value in config.items()}
    run_dir = grpolab.train(config, reward_funcs=[short_answer], overrides=["reward.weights.short_answer=0.5"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["reward"]["functions"] == ["python:short_answer"]
    assert all("rewards/short_answer" in record for record in metrics(run_dir))
    with pytest.raises(ConfigError, match="'short_answer' was passed in Python.*pass it again"):
        grpolab.train(resume=run_dir, overrides=["train.max_steps=3"])
    result = run_cli("train", "--resume", str(run_dir), "train.max_steps=3")
    assert result.returncode == 2 and "was passed in Python" in result.stderr
    grpolab.train({"train.max_steps": 3}, resume=run_dir, reward_funcs=[short_answer])
    assert [record["step"] for record in metrics(run_dir)] == [1, 2, 3]


def test_the_python_api_refuses_what_the_command_line_refuses(tmp_path):
    with pytest.raises(ConfigError, match="rollout.group_size: got 1"):
        grpolab.train({"model": "tiny-random", "rollout.group_size": 1, "output_dir": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match="unknown config key 'rollout.groups'"):
        grpolab.train({"rollout": {"groups": 4}})
    with pytest.raises(ConfigError, match="a def, not a lambda"):
        grpolab.train({"model": "tiny-random"}, reward_funcs=[lambda completion, example: 0.0])
    assert not (tmp_path / "r").exists()


ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(1, 9) for b in range(1, 6)]


def test_the_python_api_trains_on_rows_passed_in_python(tmp_path):
    config = {"model": "tiny-random", "output_dir": str(tmp_path / "rows"), "log.quiet": True}
    run_dir = grpolab.train(config, dataset=ROWS, overrides=ANY_TASK[1:])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["task"] == "python:dataset"
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 4  # 40 rows: 4 held out, 36 trained on


def test_the_python_api_takes_a_datasets_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[4:]), "test": datasets.Dataset.from_list(ROWS[:4])}
    )
    config = {"model": "tiny-random", "output_dir": str(tmp_path / "dict"), "log.quiet": True}
    run_dir = grpolab.train(config, dataset=data, overrides=ANY_TASK[1:])
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 4
    with pytest.raises(ConfigError, match="dataset= or task=, not both"):
        grpolab.train(config, dataset=data, task=type("T", (), {}))


def test_the_example_script_runs(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ROOT / "examples" / "custom_reward.py"
    args = [*ANY_TASK, f"output_dir={tmp_path / 'example'}", "log.quiet=true"]
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert '"after"' in result.stdout and "rewards/concise" in result.stdout
