"""Where a run goes: its folder's name from the config's name, task and start time."""

from __future__ import annotations

import re
import time
from pathlib import Path

from grpolab.errors import ConfigError


def run_place(config) -> tuple[str, str]:
    """(name, output_dir) of a run. An output_dir is kept as given (a name still holding `{task}` or `{time}`,
    shown by trackers, becomes the folder's name); without one the folder is runs/<name>, with `{task}` and
    `{time}` filled in. A name with `{time}` is a new run's, so a folder already there (a run started in the same
    second) makes it `<name>-2`, `-3`, ...; and it never names a run to resume."""
    if config.output_dir:
        placeholders = "{task}" in config.name or "{time}" in config.name
        name = (Path(config.output_dir).name or "run") if placeholders else config.name
        return name, config.output_dir
    if "{time}" in config.name and getattr(config, "resume", False):
        raise ConfigError(
            "resume: say which run to continue: output_dir=RUN_DIR or name=NAME (or grpolab train --resume RUN_DIR)"
        )
    name = config.name
    if "{task}" in name:
        if not isinstance(getattr(config, "task", None), str):
            raise ConfigError(f"name: {name!r} uses {{task}}, and this command has no task key")
        name = name.replace("{task}", task_folder_name(config.task))
    if "{time}" not in name:
        return name, str(Path("runs") / name)
    name = chosen = name.replace("{time}", time.strftime("%Y%m%d-%H%M%S"))
    number = 1
    while (Path("runs") / chosen).exists():
        number += 1
        chosen = f"{name}-{number}"
    return chosen, str(Path("runs") / chosen)


def task_folder_name(task: str) -> str:
    """A task spec as part of a folder name: `jsonl:data/x.jsonl` -> `jsonl-x`, `hf:openai/gsm8k,split=test`
    -> `hf-gsm8k`, `my_tasks.py:Sorting` -> `my_tasks-Sorting`."""
    kind, _, source = task.partition(":")
    kind = Path(kind).stem if kind.endswith(".py") else kind
    source = Path(source.split(",")[0]).stem if source else ""
    text = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{kind}-{source}" if source else kind)
    return text.strip("-.")[:48].rstrip("-.") or "task"
