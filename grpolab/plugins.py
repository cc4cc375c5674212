"""The user's own code, named in the config by import path, so that every command (train, resume, eval,
score, report) finds it again from the run's config.yaml.

A spec is `FILE.py:NAME` (a Python file, absolute or relative to the working directory; its folder is put
on `sys.path` first, as `python FILE.py` would, so it can import its neighbours) or `MODULE:NAME` (an
importable module, e.g. `mypkg.rewards:judge`). Used by `reward.functions=[...]` (reward functions) and
`task=...` (a Task subclass).

`python:NAME` is what config.yaml records for an object passed in Python (`grpolab.train(...,
reward_funcs=[fn])`) that no import path reaches (defined in a notebook or a script's `__main__`): it resolves
only while a call that passed it runs, so a resume needs it passed again, and says so in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

from grpolab.errors import ConfigError

PYTHON = "python:"
_passed: dict[str, object] = {}  # NAME -> the object passed in Python to the call now running


@contextlib.contextmanager
def passed_in(objects: dict[str, object]) -> Iterator[None]:
    """Make `python:NAME` resolve to `objects[NAME]` while the block runs (one `grpolab.train` call)."""
    saved = dict(_passed)
    _passed.update(objects)
    try:
        yield
    finally:
        _passed.clear()
        _passed.update(saved)


def is_spec(text: str) -> bool:
    """Whether `text` names user code (FILE.py:NAME, MODULE:NAME or python:NAME) rather than a built-in."""
    target, sep, name = text.rpartition(":")
    if not sep or not name.isidentifier():
        return False
    return text.startswith(PYTHON) or target.endswith(".py") or all(part.isidentifier() for part in target.split("."))


def absolute(spec: str) -> str:
    """A `FILE.py:NAME` spec with FILE made absolute, so a resume or an eval from another folder finds it."""
    target, sep, name = spec.rpartition(":")
    if sep and target.endswith(".py") and not spec.startswith(PYTHON):
        return f"{Path(target).expanduser().resolve()}:{name}"
    return spec


def load_object(spec: str, key: str) -> object:
    """The object `spec` names; a ConfigError names `key`, the spec and what went wrong, in one line."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ConfigError(f"{key}: {spec!r} is not FILE.py:NAME or MODULE:NAME")
    if spec.startswith(PYTHON):
        if name not in _passed:
            raise ConfigError(
                f"{key}: {name!r} was passed in Python (config.yaml records {spec!r}); pass it again, "
                f"e.g. grpolab.train(..., reward_funcs=[{name}]) or task={name}"
            )
        return _passed[name]
    module = load_file(target, key) if target.endswith(".py") else import_module(target, key)
    if not hasattr(module, name):
        raise ConfigError(f"{key}: {target} has no {name!r}")
    return getattr(module, name)


def load_file(path: str, key: str):
    """Import a Python file as a module (once per file: a second spec naming it reuses the module)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"{key}: no such file {path!r}")
    module_name = f"grpolab_user_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    sys.modules[module_name] = module  # before running it: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(f"{key}: importing {path} failed: {one_line(error)}") from error
    return module


def import_module(name: str, key: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            raise ConfigError(f"{key}: no module named {name!r} (is it installed, or on PYTHONPATH?)") from None
        raise ConfigError(f"{key}: importing {name} failed: {one_line(error)}") from error
    except Exception as error:
        raise ConfigError(f"{key}: importing {name} failed: {one_line(error)}") from error


def one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}".rstrip(": ")


def spec_of(obj: object) -> str:
    """The spec config.yaml records for an object passed in Python: `MODULE:NAME` when that import path gives
    this very object back (so any command can find it), else `python:NAME`."""
    name = getattr(obj, "__name__", None) or type(obj).__name__
    module = getattr(obj, "__module__", None) or type(obj).__module__
    if module and module != "__main__" and not module.startswith("grpolab_user_"):
        with contextlib.suppress(Exception):
            if getattr(importlib.import_module(module), name) is obj:
                return f"{module}:{name}"
    return f"{PYTHON}{name}"


def reward_functions(specs: list[str], taken: set[str]) -> dict[str, object]:
    """`reward.functions`: NAME -> callable(completion, example) -> float | None, each checked to take those two
    arguments. A NAME already taken by a task or optional reward is refused (its weight would be ambiguous)."""
    functions: dict[str, object] = {}
    for index, spec in enumerate(specs):
        key = f"reward.functions.{index}"
        function = load_object(spec, key)
        name = spec.rpartition(":")[2]
        if not callable(function):
            raise ConfigError(f"{key}: {spec!r} is a {type(function).__name__}, not a function")
        check_signature(function, key, spec)
        if name in functions or name in taken:
            raise ConfigError(f"{key}: a reward named {name!r} exists already; give the function another name")
        functions[name] = function
    return functions


def check_signature(function, key: str, spec: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C callable: its own call will say
    try:
        signature.bind("completion", {})
    except TypeError:
        raise ConfigError(
            f"{key}: {spec!r} must take (completion: str, example: dict) and return a float or None; "
            f"its signature is {signature}"
        ) from None


__all__ = ["PYTHON", "absolute", "is_spec", "load_object", "passed_in", "reward_functions", "spec_of"]
