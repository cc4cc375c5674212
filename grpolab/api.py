"""The Python API, for notebooks and scripts: `grpolab.train(...)` runs what `grpolab train` runs, with the same
validation and the same one-line errors (raised as `grpolab.errors.UserError` subclasses), and returns the run
folder.

    import grpolab

    def brevity(completion: str, example: dict) -> float:
        return 1.0 if len(completion) < 200 else 0.0

    run = grpolab.train({"model": "tiny-random", "train.max_steps": 10}, reward_funcs=[brevity])

Objects passed in Python join the config by name: a reward function under its `__name__` (weight it with
`reward.weights.<name>`), a task class or instance as `task`. config.yaml records each one as `MODULE:NAME`
when that import path finds it again (then `grpolab train --resume` and `grpolab eval` work on the run as on
any other) and as `python:NAME` when it does not (defined in a notebook or `__main__`): resuming such a run
needs the object passed again, `grpolab.train(resume=RUN, reward_funcs=[brevity])` (grpolab/plugins.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from grpolab import plugins
from grpolab.config import Config, flatten, load_config, settings_overrides, to_dict
from grpolab.errors import ConfigError
from grpolab.tasks import Task


def train(
    config: str | Path | dict | Config | None = None,
    *,
    overrides: Iterable[str] = (),
    reward_funcs: Iterable[Callable] = (),
    dataset: Any = None,
    task: type[Task] | Task | None = None,
    resume: str | Path | None = None,
    log: Callable = print,
) -> Path:
    """Train with GRPO; returns the run folder.

    config: a YAML file, a mapping of keys (nested, or dotted: {"rollout.group_size": 4}), a `Config`, or None
        for the defaults (`grpolab train` with no arguments).
    overrides: `key=value` strings applied after `config`, as on the command line.
    reward_funcs: functions f(completion, example) -> float | None added to the task's rewards, weight 1 each
        unless `reward.weights.<__name__>` says otherwise; they run in the reward workers with the time limit
        and error handling of the built-in ones.
    dataset: rows with `question` and `answer` fields (a list of dicts, a `datasets.Dataset` or a
        `DatasetDict` with train and test splits) to train and evaluate on; answers are checked like
        `task=jsonl:` (math-verify, then exact text). Rows of one split hold out every tenth row.
    task: a `grpolab.tasks.Task` subclass (built with no arguments) or instance; not together with `dataset`.
    resume: a run folder to continue from its newest checkpoint, with its config.yaml (`config` then only
        overrides keys, as `grpolab train --resume RUN key=value`); pass again what was passed in Python.
    """
    from grpolab.training.trainer import train as run_grpo

    if dataset is not None and task is not None:
        raise ConfigError("grpolab.train: pass dataset= or task=, not both (a task owns its data)")
    passed: dict[str, object] = {}
    built = build_config(config, list(overrides), resume)
    for function in reward_funcs:
        spec = passed_spec(function, "reward_funcs", passed)
        if spec not in built.reward.functions:
            built.reward.functions.append(spec)
    if dataset is not None:
        passed["dataset"] = dataset_task(dataset)
        built.task = f"{plugins.PYTHON}dataset"
    elif task is not None:
        built.task = passed_spec(task, "task", passed)
    with plugins.passed_in(passed):
        built.validate()
        return run_grpo(built, log=log)


def build_config(config, overrides: list[str], resume) -> Config:
    if isinstance(config, Config):
        config = to_dict(config)
    path = None
    if isinstance(config, (str, Path)):
        path = str(config)
    elif isinstance(config, dict):
        overrides = settings_overrides(flatten(config)) + overrides
    elif config is not None:
        raise ConfigError(f"grpolab.train: config is a {type(config).__name__}; pass a YAML path, a dict or a Config")
    if resume is not None:
        if path:
            raise ConfigError("grpolab.train: resume= takes its configuration from RUN/config.yaml; pass a dict")
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"grpolab.train: resume={str(resume)!r} holds no run (no config.yaml)")
        path, overrides = str(saved), [*overrides, f"output_dir={resume}", "resume=true"]
    return load_config(path, overrides)


def passed_spec(obj, where: str, passed: dict[str, object]) -> str:
    """The spec config.yaml records for `obj` (grpolab/plugins.py), registering `python:` ones for this call."""
    if where == "reward_funcs" and not callable(obj):
        raise ConfigError(f"grpolab.train: reward_funcs holds a {type(obj).__name__}, not a function")
    if where == "task" and not (isinstance(obj, Task) or (isinstance(obj, type) and issubclass(obj, Task))):
        raise ConfigError(f"grpolab.train: task is a {type(obj).__name__}, not a grpolab.tasks.Task class or instance")
    spec = plugins.spec_of(obj)
    name = spec.rpartition(":")[2]
    if name == "<lambda>" or not name.isidentifier():
        raise ConfigError(f"grpolab.train: {where} needs named objects (a def, not a lambda): got {name!r}")
    if spec.startswith(plugins.PYTHON):
        if passed.get(name, obj) is not obj:
            raise ConfigError(f"grpolab.train: two objects passed are both named {name!r}; rename one")
        passed[name] = obj
    return spec


def dataset_task(dataset) -> Task:
    from grpolab.tasks.hf import RowsTask

    return RowsTask(dataset)


__all__ = ["train"]
