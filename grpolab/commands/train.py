"""`grpolab train [CONFIG.yaml | PRESET] [key=value ...]`: GRPO on the configured model and task. A preset is a
YAML file shipped in grpolab/configs/, named without its path or suffix: `grpolab train dapo`."""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
from pathlib import Path

from grpolab.config import Config, describe_keys
from grpolab.errors import ConfigError


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a YAML file when it is not a key=value override."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def presets() -> dict[str, Path]:
    """The presets shipped in the package (grpolab/configs/NAME.yaml) by name."""
    folder = importlib.resources.files("grpolab") / "configs"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def config_file(name: str) -> str:
    """A config file as given, or a preset's file for a bare name that is not a file (`dapo`)."""
    if Path(name).exists() or Path(name).suffix or "/" in name:
        return name
    found = presets()
    if name not in found:
        raise ConfigError(f"config: {name!r} is neither a file nor a preset (presets: {', '.join(sorted(found))})")
    return str(found[name])


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with GRPO",
        description="Train with GRPO. With no arguments: SmolLM2-135M-Instruct on the arithmetic task.\n"
        f"The first argument may name a shipped preset instead of a file: {', '.join(sorted(presets()))} "
        "(grpolab train dapo).",
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
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train on N processes of this machine through torchrun (one per GPU; gloo on CPU); "
        "for several machines run torchrun yourself (see the README)",
    )
    parser.set_defaults(func=run, config_root=Config)


def launch_torchrun(nproc: int, args) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node N -m grpolab train ...` (same arguments,
    less --nproc): torchrun then receives the user's signals and forwards them to every rank."""
    forwarded = (
        list(args.args) + (["--quiet"] if args.quiet else []) + (["--resume", args.resume] if args.resume else [])
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "grpolab", "train", *forwarded]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def run(args) -> int:
    from grpolab.config import load_config
    from grpolab.parallel.distributed import check_world, launched_by_torchrun, leave_worker
    from grpolab.training.trainer import train

    path, overrides = split_config_args(args.args)
    if path and not args.resume:
        path = config_file(path)
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
    config.run_dir()  # the folder is chosen now: a resume that names no run is refused before anything loads
    if args.nproc is not None and not launched_by_torchrun():
        if args.nproc < 1:
            raise ConfigError(f"--nproc: got {args.nproc}, expected an integer >= 1")
        check_world(config, args.nproc)  # refused here in one line, not once per process
        args.args = [*args.args, f"output_dir={config.output_dir}"]  # the folder chosen here, not once per rank
        launch_torchrun(args.nproc, args)
    train(config)
    if launched_by_torchrun():
        leave_worker()
    return 0
