"""Task registry: `task` config values map to Task objects.

Names: `arithmetic`, `countdown[:PATH]`, `gsm8k[:PATH]`, `math[:PATH]`, `humaneval[:PATH]`,
`jsonl:PATH[,question=FIELD][,answer=FIELD]`. PATH is a JSONL file or a folder with train.jsonl and
test.jsonl; see each task's module for what it does without one.
"""

from __future__ import annotations

from grpolab.errors import TaskError
from grpolab.tasks.base import Task

TASKS = ["arithmetic", "countdown", "gsm8k", "math", "humaneval", "jsonl"]


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
    else:
        raise TaskError(f"task: unknown task {spec!r} (available: {', '.join(TASKS)}; file tasks take :PATH)")
    task.reward_config = reward_config
    return task


__all__ = ["TASKS", "Task", "TaskError", "get_task"]
