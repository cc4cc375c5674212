"""`grpolab distill [CONFIG.yaml] [key=value ...]`: a student trained on a teacher's outputs."""

from __future__ import annotations

from pathlib import Path

import yaml

from grpolab.commands.common import add_stage_parser, load_stage_config
from grpolab.commands.train import split_config_args
from grpolab.config import parse_override


def register(subparsers) -> None:
    from grpolab.stages.distill import DistillConfig

    parser = add_stage_parser(
        subparsers,
        "distill",
        DistillConfig,
        "distil a teacher into a (smaller) student",
        "method=sequence: SFT of the student on the teacher's rejection-sampled samples (data=PATH, or "
        "sampled now with the rejection.* keys of grpolab sample when data is empty); method=token: "
        "KL(teacher || student) on the teacher's top-k logits. teacher= (and student.model=) may be a run "
        "folder: its final/.",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-step lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.distill import DistillConfig, distill, refuse_old_keys

    path, overrides = split_config_args(args.args)
    refuse_old_keys([*file_keys(path), *(parse_override(text)[0] for text in overrides)])
    distill(load_stage_config(args, DistillConfig, ["log.quiet=true"] if args.quiet else []))
    return 0


def file_keys(path: str | None) -> list[str]:
    """The top-level keys of a YAML config file; none when it cannot be read (load_config then says why)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return [str(key) for key in data] if isinstance(data, dict) else []
