"""What every stage command shares: `[CONFIG.yaml] [key=value ...]` arguments and a `--help` epilog that
lists the command's configuration keys."""

from __future__ import annotations

import argparse

from grpolab.commands.train import split_config_args
from grpolab.config import describe_keys, load_config


def add_stage_parser(
    subparsers, name: str, root: type, help_text: str, description: str, appendix: str = "",
    positionals: tuple[tuple[str, dict], ...] = (), metavar: str = "[CONFIG.yaml] [key=value ...]",
):  # fmt: skip
    """The command's parser; `appendix` replaces key lines that are lists (shown as YAML instead);
    `positionals` are (name, add_argument options) of arguments before the `key=value` list."""
    keys = [
        line for line in describe_keys(root()) if not (appendix and "  (list[" in line and "(list[str])" not in line)
    ]
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=description,
        epilog="configuration keys (key = default):\n" + "\n".join(keys) + appendix,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for argument, options in positionals:
        parser.add_argument(argument, **options)
    parser.add_argument("args", nargs="*", metavar=metavar)
    parser.set_defaults(config_root=root)  # `--key value` for one of these keys is refused (grpolab/cli.py)
    return parser


def load_stage_config(args, root: type, extra: list[str] = ()):
    """The command's config from its YAML file (if any), then its key=value overrides, then `extra`."""
    path, overrides = split_config_args(args.args)
    return load_config(path, [*overrides, *extra], root=root)
