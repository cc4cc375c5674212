"""`grpolab pipeline [CONFIG.yaml] [key=value ...]`: the R1 stages chained in one resumable folder."""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser
from grpolab.commands.train import split_config_args
from grpolab.config import load_config


def register(subparsers) -> None:
    import yaml

    from grpolab.config import to_dict
    from grpolab.stages.pipeline import PipelineConfig

    stages = yaml.safe_dump({"stages": to_dict(PipelineConfig())["stages"]}, sort_keys=False)

    parser = add_stage_parser(
        subparsers,
        "pipeline",
        PipelineConfig,
        "run the R1 stages one after another and compare their models",
        "Runs the configured stages (grpo, sft, sample, distill, eval), each feeding the next, skipping "
        "stages already completed in the same output_dir, then evaluates base and every stage's model on the "
        "same held-out split. With no file: SmolLM2-135M -> GRPO on arithmetic (the RL teacher) -> rejection "
        "sampling; a student pruned from SmolLM2 to half its layers, distilled three ways (sequence, token, "
        "on_policy) and trained by GRPO alone; one table of them all.",
        appendix="\n\ndefault stages (a stage's settings are its command's keys):\n" + stages,
    )
    parser.add_argument("--quick", action="store_true", help="the default stages on tiny-random in seconds (for CI)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.pipeline import PipelineConfig, quick_settings, run_pipeline

    path, overrides = split_config_args(args.args)  # --quick's settings first: the command line's win over them
    run_pipeline(load_config(path, [*(quick_settings() if args.quick else []), *overrides], root=PipelineConfig))
    return 0
