"""`grpolab sample [CONFIG.yaml] [key=value ...]`: rejection sampling into SFT-ready JSONL."""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser, load_stage_config


def register(subparsers) -> None:
    from grpolab.stages.sample import SampleConfig

    parser = add_stage_parser(
        subparsers,
        "sample",
        SampleConfig,
        "rejection sampling: keep a model's good, readable samples as SFT data",
        "k samples per training prompt; keep those whose reward reaches rejection.threshold and that are "
        "readable; deduplicate; cap per prompt. Writes data.jsonl (SFT-ready), samples.jsonl, summary.json.",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.sample import SampleConfig, rejection_sample

    rejection_sample(load_stage_config(args, SampleConfig))
    return 0
