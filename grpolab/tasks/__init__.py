"""Task registry: `task` config values map to Task objects.

Names: `arithmetic`, `countdown[:PATH]`, `gsm8k[:PATH]`, `math[:PATH]`, `humaneval[:PATH]`,
`jsonl:PATH[,question=FIELD][,answer=FIELD]` and `hf:DATASET[,split=S][,question=FIELD][,answer=FIELD]`
(grpolab/tasks/hf.py). PATH is a JSONL file or a folder with train.jsonl and test.jsonl; see each task's
module for what it does without one. Your own task: `FILE.py:CLASS` or `MODULE:CLASS`, a `Task` subclass
(grpolab/tasks/base.py, grpolab/plugins.py).
"""

from __future__ import annotations

from grpolab import plugins
from grpolab.errors import TaskError
from grpolab.tasks.base import Task

TASKS = ["arithmetic", "countdown", "gsm8k", "math", "humaneval", "jsonl", "hf"]


def get_task(spec: str, reward_config=None, template: str = "default") -> Task:
    """The task named by `spec` (`name` or `name:PATH`), with the run's reward options."""
    name, _, source = spec.partition(":")
    if name == "arithmetic" and not source:
        from grpolab.tasks.arithmetic import ArithmeticTask

        task = ArithmeticTask(template=template)
    elif name == "countdown":
        from grpolab.tasks.countdown import CountdownTask

        task = CountdownTask(source)
    elif name in ("gsm8k", "math"):
        from grpolab.tasks.gsm8k import GSM8KTask, MathTask

        task = (GSM8KTask if name == "gsm8k" else MathTask)(source)
    elif name == "humaneval":
        from grpolab.tasks.humaneval import HumanEvalTask

        task = HumanEvalTask(source)
    elif name == "jsonl":
        from grpolab.tasks.jsonl import JsonlTask

        task = JsonlTask(source)
    elif name == "hf":
        from grpolab.tasks.hf import HFTask

        task = HFTask(source)
    elif plugins.is_spec(spec):
        task = plugin_task(spec)
    else:
        raise TaskError(
            f"task: unknown task {spec!r} (available: {', '.join(TASKS)}; file tasks take :PATH; "
            "your own: FILE.py:CLASS or MODULE:CLASS)"
        )
    task.reward_config = reward_config
    return task


def plugin_task(spec: str) -> Task:
    """`task=FILE.py:CLASS` / `MODULE:CLASS` (grpolab/plugins.py): a Task subclass, built with no arguments,
    or (passed in Python) a Task instance."""
    found = plugins.load_object(spec, "task")
    if isinstance(found, Task):
        return found
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise TaskError(f"task: {spec!r} is not a subclass of grpolab.tasks.Task")
    try:
        return found()
    except TypeError as error:
        raise TaskError(f"task: {spec!r} cannot be built with no arguments ({error})") from None


__all__ = ["TASKS", "Task", "TaskError", "get_task"]
