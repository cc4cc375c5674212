"""Task registry: `task` config values map to Task objects."""

from __future__ import annotations

from grpolab.tasks.base import Task


class TaskError(ValueError):
    """An unknown task name or unusable task data; one line naming the problem."""


def get_task(name: str, template: str = "default") -> Task:
    if name == "arithmetic":
        from grpolab.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(template=template)
    raise TaskError(f"task: unknown task {name!r} (available: arithmetic)")


__all__ = ["Task", "TaskError", "get_task"]
