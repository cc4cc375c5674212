"""The `grpolab` command line. Each subcommand lives in `grpolab/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the handler.

Errors that are the user's (bad config, missing model or data) print one line and exit 2;
`--debug` shows the traceback instead. A command with configuration keys takes them as `key=value`, never as
flags: `--model X` for its key `model` is refused in one line that says to write `model=X`. `grpolab --version`
prints the installed version.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing

from grpolab.errors import ConfigError, ModelError, RewardError, RunFolderError, TaskError, TrainingError, UserError
from grpolab.model.memory import keep_freed_memory

COMMANDS = [
    "train", "eval", "sft", "sample", "distill", "pipeline", "prune", "score", "report", "chat", "bench", "plan",
    "push",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpolab", description="GRPO and the DeepSeek-R1 recipe.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"grpolab.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"grpolab.commands.{name}":
                raise
            continue  # a command not built yet
        module.register(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:

    return (
        UserError,
        ConfigError,
        ModelError,
        TaskError,
        RewardError,
        TrainingError,
        RunFolderError,
        FileNotFoundError,
        FileExistsError,
    )


def environment_errors() -> tuple[type[BaseException], ...]:
    """What the machine refused (permissions, a full or read-only disk, a path under a file): one line each,
    naming the file, not a traceback. safetensors reports a failed write as its own error type."""
    from safetensors import SafetensorError

    return (OSError, SafetensorError)


def environment_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename!r}" if error.filename else ""
        return f"{error.strerror}{where}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def version_line() -> str:
    """`grpolab <version>`, the installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"grpolab {version('grpolab')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "grpolab (version unknown: not installed)"


def config_keys(root: type) -> dict[str, type]:
    """Every dotted key of a config dataclass -> its type."""
    keys = {}
    for name, tp in typing.get_type_hints(root).items():
        if dataclasses.is_dataclass(tp):
            keys.update({f"{name}.{key}": sub for key, sub in config_keys(tp).items()})
        else:
            keys[name] = tp
    return keys


def refuse_key_flags(args, extra: list[str], argv: list[str]) -> None:
    """A `--key value` or `--key=value` for a key of the command's config (the commands that take `key=value`
    set `config_root`): one line that shows the `key=value` to write, and exit 2."""
    root = getattr(args, "config_root", None)
    keys = config_keys(root) if root is not None else {}
    for item in extra:
        flag, has_value, value = item.partition("=")
        key = flag[2:].replace("-", "_")
        if not flag.startswith("--") or key not in keys:
            continue
        if not has_value:
            following = argv[argv.index(item) + 1 : argv.index(item) + 2]
            given = following and not following[0].startswith("-") and "=" not in following[0]
            value = following[0] if given else ("true" if keys[key] is bool else "X")
        print(
            f"grpolab {args.command}: error: unknown flag {flag}; write {key}={value} (every command takes key=value)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def parse_arguments(parser, argv: list[str]):
    """argparse stops filling a `key=value ...` list at the first flag (`a=1 --quiet b=2` left `b=2` unrecognised):
    such stray pairs join the command's list, in order; a flag named after a config key is refused with the
    `key=value` to write instead; anything else unknown is still an error."""
    args, extra = parser.parse_known_args(argv)
    refuse_key_flags(args, extra, argv)
    lists = [getattr(args, name) for name in ("args", "overrides") if isinstance(getattr(args, name, None), list)]
    pairs = lists[0] if lists else None
    stray = [item for item in extra if item.startswith("-") or "=" not in item or pairs is None]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        pairs.extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # without loading every command (and torch)
        print(version_line())
        return 0
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    keep_freed_memory()  # before the first large tensor (grpolab/model/memory.py)
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_errors() as error:
        if debug:
            raise
        print(f"grpolab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except environment_errors() as error:
        if debug:
            raise
        print(f"grpolab {args.command}: error: {environment_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"grpolab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
