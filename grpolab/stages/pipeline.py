"""`grpolab pipeline [CONFIG.yaml]`: the R1 recipe as a list of stages in one folder, then every model on
the same held-out evaluation, side by side.

Each stage is one of the commands (grpo, sft, sample, distill, eval) with its own settings. Stages feed each
other by name: a stage's `model` is `base` (the pipeline's model), the name of an earlier stage that made a
model (its `final/`), or any model name or folder; empty means the latest model made so far. A stage's
`data` (for sft and distill) is the name of an earlier sample stage (its `data.jsonl`) or a JSONL path;
empty means the latest sample stage's data.

Resumable: stage S writes into `stages/S/` and, only once it has finished, an atomically renamed marker
`stages/S.done.json`. A later invocation on the same folder skips every stage with a marker and reruns a
stage without one from scratch. The pipeline's `config.yaml` must be unchanged for that (changed settings
mean a new folder, or `overwrite=true`, which starts again).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from grpolab.config import Config, GenerationRunConfig, check_ranges, load_config, settings_overrides, to_dict, to_yaml
from grpolab.errors import ConfigError
from grpolab.runs.folder import prepare_run_dir, write_json_atomic, write_text_atomic
from grpolab.stages.evaluate import EvalRunConfig, evaluate, format_table

KINDS = ("grpo", "sft", "sample", "distill", "eval")
MAKES_MODEL = ("grpo", "sft", "distill")
RESERVED = ("output_dir", "overwrite", "name")  # the pipeline decides where each stage writes


@dataclass
class StageConfig:
    name: str = ""
    kind: Literal["grpo", "sft", "sample", "distill", "eval"] = "grpo"
    model: str = ""  # base | an earlier stage | a model name or folder; empty: the latest model
    data: str = ""  # an earlier sample stage | a JSONL path; empty: the latest sample stage's data
    settings: dict[str, Any] = field(default_factory=dict)  # the stage command's own config keys


@dataclass
class CompareConfig:
    models: list[str] = field(default_factory=list)  # base and stage names; empty: base and every model made
    n: int = 100
    k: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 48
    batch_size: int = 32


def default_stages() -> list[StageConfig]:
    """SmolLM2-135M -> GRPO on arithmetic -> rejection sampling -> distillation into a small student, sized
    for a 2-core CPU. GRPO is short (30 steps of 8 x 8, the trainer's learning rate), samples at most 32
    tokens (the comparison's budget: a verbose answer cut before its number scores 0) and has no reference
    model (beta = 0 saves a third of the compute)."""
    return [
        StageConfig(
            name="grpo",
            kind="grpo",
            model="base",
            settings={
                "train.max_steps": 30,
                "train.learning_rate": 2e-5,
                "rollout.prompts_per_step": 8,
                "rollout.group_size": 8,
                "rollout.max_new_tokens": 32,
                "grpo.beta": 0.0,
                "eval.before": False,
                "eval.after": False,
            },
        ),
        StageConfig(
            name="samples",
            kind="sample",
            model="grpo",
            settings={"rejection.prompts": 32, "rejection.k": 4, "rejection.max_new_tokens": 32},
        ),
        StageConfig(
            name="student",
            kind="distill",
            model="grpo",
            data="samples",
            settings={"method": "sequence", "train.epochs": 30, "train.batch_size": 4, "train.max_length": 256},
        ),
    ]


@dataclass
class PipelineConfig(GenerationRunConfig):
    model: str = "smollm2-135m"  # the base model
    task: str = "arithmetic"
    name: str = "pipeline-{task}-{time}"
    stages: list[StageConfig] = field(default_factory=default_stages)
    compare: CompareConfig = field(default_factory=lambda: CompareConfig(n=100, k=4, max_new_tokens=32, batch_size=50))

    def validate(self) -> None:
        check_ranges(
            self,
            {
                "compare.n": (lambda v: v >= 1, "an integer >= 1"),
                "compare.k": (lambda v: v >= 1, "an integer >= 1"),
                "compare.max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
                "compare.batch_size": (lambda v: v >= 1, "an integer >= 1"),
            },
        )
        names: set[str] = {"base"}
        for index, stage in enumerate(self.stages):
            if not stage.name or "/" in stage.name or stage.name in names:
                raise ConfigError(f"stages.{index}.name: {stage.name!r} must be a new, non-empty name without '/'")
            reserved = [key for key in stage.settings if key.split(".")[0] in RESERVED]
            if reserved:
                raise ConfigError(f"stages.{index}.settings: {reserved[0]!r} is set by the pipeline")
            names.add(stage.name)
        for label in self.compare.models:
            if label not in names:
                raise ConfigError(f"compare.models: {label!r} is neither base nor a stage name")


class Plan:
    """Where each stage writes, and what the names `base`, stage names and empty inputs resolve to."""

    def __init__(self, config: PipelineConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.kinds = {stage.name: stage.kind for stage in config.stages}
        self.latest_model, self.latest_data = config.model, ""

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def model(self, reference: str, where: str) -> str:
        if not reference:
            return self.latest_model
        if reference == "base":
            return self.config.model
        if reference in self.kinds:
            if self.kinds[reference] not in MAKES_MODEL:
                raise ConfigError(f"{where}: stage {reference!r} makes no model")
            return str(self.stage_dir(reference) / "final")
        return reference

    def data(self, reference: str, where: str) -> str:
        if reference in self.kinds:
            if self.kinds[reference] != "sample":
                raise ConfigError(f"{where}: stage {reference!r} makes no data")
            return str(self.stage_dir(reference) / "data.jsonl")
        if not (reference or self.latest_data):
            raise ConfigError(f"{where}: no data (name a sample stage or a JSONL file)")
        return reference or self.latest_data


def stage_config(plan: Plan, index: int, stage: StageConfig):
    """The stage command's validated config: the pipeline's inputs and folder, then the stage's settings."""
    from grpolab.stages.distill import DistillConfig, refuse_old_keys
    from grpolab.stages.sample import SampleConfig
    from grpolab.stages.sft import SFTConfig

    where = f"stages.{index}"
    pipeline = plan.config
    model = plan.model(stage.model, f"{where}.model")
    common = {"output_dir": str(plan.stage_dir(stage.name)), "overwrite": True, "seed": pipeline.seed}
    engine = {"engine": pipeline.engine, "dtype": pipeline.dtype}
    if stage.kind == "grpo":
        generation = {"rollout.engine": pipeline.engine, "rollout.dtype": pipeline.dtype}
        root, values = Config, {"model": model, "task": pipeline.task, **generation}
    elif stage.kind == "sft":
        root, values = SFTConfig, {"model": model, "data": plan.data(stage.data, f"{where}.data")}
    elif stage.kind == "sample":
        root, values = SampleConfig, {"model": model, "task": pipeline.task, **engine}
    elif stage.kind == "distill":
        data = plan.data(stage.data, f"{where}.data")
        root, values = DistillConfig, {"teacher": model, "task": pipeline.task, "data": data, **engine}
    else:
        root, values = EvalRunConfig, {"model": model, "task": pipeline.task, **engine}
    try:
        if stage.kind == "distill":
            refuse_old_keys(stage.settings)
        return load_config(None, settings_overrides({**common, **values, **stage.settings}), root=root)
    except ConfigError as error:
        raise ConfigError(f"{where} ({stage.name}): {error}") from None


def run_stage(kind: str, config) -> None:
    from grpolab.stages.distill import distill
    from grpolab.stages.sample import rejection_sample
    from grpolab.stages.sft import sft
    from grpolab.training.trainer import train

    {"grpo": train, "sft": sft, "sample": rejection_sample, "distill": distill, "eval": evaluate}[kind](config)


def run_once(marker: Path, label: str, work, log) -> dict:
    """Run `work()` unless `marker` says it finished before; returns the marker's record."""
    if marker.exists():
        log(f"pipeline: {label}: already completed, skipped")
        return json.loads(marker.read_text())
    log(f"pipeline: {label}: running")
    start = time.perf_counter()
    record = work() or {}
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(marker, record)
    return record


def open_run_dir(config: PipelineConfig) -> Path:
    """The pipeline folder: new, resumed (same config.yaml), or emptied with overwrite=true."""
    run_dir = config.run_dir()
    saved = run_dir / "config.yaml"
    if not config.overwrite and saved.exists():
        if yaml.safe_load(saved.read_text()) != to_dict(config):
            raise FileExistsError(
                f"output_dir: {str(run_dir)!r} holds a pipeline with other settings; "
                "pass overwrite=true or choose another output_dir"
            )
        return run_dir
    prepare_run_dir(run_dir, config.overwrite)
    write_text_atomic(saved, to_yaml(config))
    return run_dir


def run_pipeline(config: PipelineConfig, log=print) -> dict:
    """Run (or resume) the stages, then the comparison; returns the comparison summary."""
    start = time.perf_counter()
    run_dir = open_run_dir(config)
    plan = Plan(config, run_dir)
    configs = []
    for index, stage in enumerate(config.stages):  # every stage's config is checked before any work
        configs.append(stage_config(plan, index, stage))
        if stage.kind in MAKES_MODEL:
            plan.latest_model = str(plan.stage_dir(stage.name) / "final")
        if stage.kind == "sample":
            plan.latest_data = str(plan.stage_dir(stage.name) / "data.jsonl")
    timings = {}
    for stage, stage_cfg in zip(config.stages, configs):
        marker = run_dir / "stages" / f"{stage.name}.done.json"
        work = lambda stage=stage, stage_cfg=stage_cfg: run_stage(stage.kind, stage_cfg) or {"kind": stage.kind}
        timings[stage.name] = run_once(marker, f"stage {stage.name} ({stage.kind})", work, log)["seconds"]
    rows = compare(config, plan, log)
    summary = {"rows": rows, "stage_seconds": timings}
    table = format_table(rows, label="label")
    write_text_atomic(run_dir / "comparison.md", table + "\n")
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    write_json_atomic(run_dir / "comparison.json", summary)
    log(f"\nheld-out comparison on {config.task} (greedy{'' if config.compare.k == 1 else ', k samples'}):")
    log(table)
    log(f"pipeline folder: {run_dir}")
    return summary


def compare(config: PipelineConfig, plan: Plan, log) -> list[dict]:
    """Every compared model on the same held-out evaluation, each run once (resumable like the stages)."""
    labels = config.compare.models or ["base"] + [s.name for s in config.stages if s.kind in MAKES_MODEL]
    rows = []
    for label in labels:
        folder = plan.run_dir / "compare" / label
        settings = {key: getattr(config.compare, key) for key in ("n", "k", "temperature", "top_p")}
        settings.update(max_new_tokens=config.compare.max_new_tokens, batch_size=config.compare.batch_size)
        values = {
            "model": plan.model(label, "compare.models"),
            "task": config.task,
            "engine": config.engine,
            "dtype": config.dtype,
            "seed": config.seed,
            "output_dir": str(folder),
            "overwrite": True,
            **settings,
        }
        eval_config = load_config(None, settings_overrides(values), root=EvalRunConfig)
        marker = plan.run_dir / "compare" / f"{label}.done.json"
        result = run_once(marker, f"evaluation of {label}", lambda c=eval_config: evaluate(c, log=log), log)
        rows.append({"label": label, **{k: v for k, v in result.items() if k != "seconds"}})
    return rows
