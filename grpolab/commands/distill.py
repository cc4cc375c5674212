"""`grpolab distill [CONFIG.yaml] [key=value ...]`: a student trained on a teacher's outputs."""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser, load_stage_config


def register(subparsers) -> None:
    from grpolab.stages.distill import DistillConfig

    parser = add_stage_parser(
        subparsers,
        "distill",
        DistillConfig,
        "distil a teacher into a (smaller) student",
        "method=sequence: SFT of the student on the teacher's rejection-sampled samples (data=PATH, or "
        "sampled now when data is empty); method=token: KL(teacher || student) on the teacher's top-k logits.",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-step lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.distill import DistillConfig, distill

    distill(load_stage_config(args, DistillConfig, ["log.quiet=true"] if args.quiet else []))
    return 0
