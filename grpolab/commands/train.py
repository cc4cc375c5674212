"""`grpolab train [CONFIG.yaml] [key=value ...]`: GRPO on the configured model and task."""

from __future__ import annotations

import argparse
from pathlib import Path

from grpolab.config import describe_keys


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a YAML file when it is not a key=value override."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with GRPO",
        description="Train with GRPO. With no arguments: SmolLM2-135M-Instruct on the arithmetic task.",
        epilog="configuration keys (key = default):\n" + "\n".join(describe_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    parser.add_argument("--quiet", action="store_true", help="no live progress; only the final summary")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest complete checkpoint (its config.yaml, plus overrides)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.config import ConfigError, load_config
    from grpolab.trainer import train

    path, overrides = split_config_args(args.args)
    if args.quiet:
        overrides = [*overrides, "log.quiet=true"]
    if args.resume:
        if path:
            raise ConfigError("--resume takes its configuration from RUN_DIR/config.yaml; pass only key=value")
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {args.resume!r} holds no run (no config.yaml)")
        path, overrides = str(saved), [*overrides, f"output_dir={args.resume}", "resume=true"]
    config = load_config(path, overrides)
    train(config)
    return 0
