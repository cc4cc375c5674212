"""`grpolab pipeline [CONFIG.yaml] [key=value ...]`: the R1 stages chained in one resumable folder."""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser, load_stage_config


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
        "same held-out split. With no file: SmolLM2-135M -> GRPO on arithmetic -> rejection sampling -> "
        "distillation into a ~3M-parameter student.",
        appendix="\n\ndefault stages (a stage's settings are its command's keys):\n" + stages,
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.stages.pipeline import PipelineConfig, run_pipeline

    run_pipeline(load_stage_config(args, PipelineConfig))
    return 0
