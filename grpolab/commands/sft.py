"""`grpolab sft [CONFIG.yaml] [key=value ...]`: supervised fine-tuning on JSONL conversations."""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser, load_stage_config


def register(subparsers) -> None:
    from grpolab.stages.sft import SFTConfig

    parser = add_stage_parser(
        subparsers,
        "sft",
        SFTConfig,
        "supervised fine-tuning on JSONL conversations",
        "SFT on data=PATH (JSONL of {'messages': [...]} or {'prompt', 'completion'}), loss on assistant "
        "tokens only, with sequence packing. Writes config.yaml, metrics.jsonl and final/ into output_dir.",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-step lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.sft import SFTConfig, sft

    sft(load_stage_config(args, SFTConfig, ["log.quiet=true"] if args.quiet else []))
    return 0
