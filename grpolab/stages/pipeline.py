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

KINDS = ("grpo", "sft", "sample", "prune", "distill", "eval")
MAKES_MODEL = ("grpo", "sft", "prune", "distill")
RESERVED = ("output_dir", "overwrite", "name")  # the pipeline decides where each stage writes


@dataclass
class StageConfig:
    name: str = ""
    kind: Literal["grpo", "sft", "sample", "prune", "distill", "eval"] = "grpo"
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
    """R1's small-model comparison, sized for a 2-core CPU: SmolLM2-135M -> GRPO on arithmetic (the RL teacher)
    -> rejection sampling of the teacher; a student pruned from the base model (half its layers, ~80M
    parameters), then distilled three ways (sequence: SFT on the samples, as R1; token: top-k KL on them;
    on_policy: the student samples, the teacher scores) and, as R1's baseline, GRPO on the pruned student
    directly, for as long as on-policy distillation trains. GRPO is short (30 steps of 8 x 8), samples at most
    32 tokens (the comparison's budget: a verbose answer cut before its number scores 0) and has no reference
    model (beta = 0 saves a third of the compute)."""
    grpo = {
        "train.learning_rate": 2e-5,
        "rollout.prompts_per_step": 8,
        "rollout.group_size": 8,
        "rollout.max_new_tokens": 32,
        "grpo.beta": 0.0,
        "eval.before": False,
        "eval.after": False,
    }
    student_minutes = {"train.max_minutes": STUDENT_MINUTES, "train.max_steps": 1000}
    on_policy = {f"on_policy.{key}": value for key, value in {**grpo, **student_minutes}.items() if key != "grpo.beta"}
    on_policy.update({"on_policy.rollout.group_size": 4, "on_policy.train.learning_rate": STUDENT_LEARNING_RATE})
    offline = {"student.model": "pruned", "train.epochs": 3, "train.batch_size": 8, "train.max_length": 256,
               "train.learning_rate": STUDENT_LEARNING_RATE}  # fmt: skip
    return [
        StageConfig(name="grpo", kind="grpo", model="base", settings={**grpo, "train.max_steps": 30}),
        StageConfig(
            name="samples",
            kind="sample",
            model="grpo",
            settings={"rejection.prompts": 128, "rejection.k": 4, "rejection.max_new_tokens": 32},
        ),
        StageConfig(name="pruned", kind="prune", model="base", settings={"spec": "half"}),
        StageConfig(
            name="sequence", kind="distill", model="grpo", data="samples", settings={"method": "sequence", **offline}
        ),  # fmt: skip
        StageConfig(
            name="token", kind="distill", model="grpo", data="samples", settings={"method": "token", **offline}
        ),  # fmt: skip
        StageConfig(
            name="on_policy",
            kind="distill",
            model="grpo",
            settings={"method": "on_policy", "student.model": "pruned", **on_policy},
        ),  # fmt: skip
        StageConfig(
            name="student_rl",
            kind="grpo",
            model="pruned",
            settings={**grpo, **student_minutes, "train.learning_rate": STUDENT_LEARNING_RATE},
        ),  # fmt: skip
    ]


STUDENT_MINUTES = 3.0  # on-policy distillation's and the student's own GRPO's training budget
STUDENT_LEARNING_RATE = 5e-5  # a pruned model heals at a larger rate than fine-tuning a whole one takes


def quick_settings() -> list[str]:
    """`grpolab pipeline --quick`: the default stages on tiny-random in seconds, for CI (what runs, not what
    learns): `key=value` overrides of the pipeline, its stages as one JSON list."""
    small = {"train.max_steps": 2, "train.max_minutes": 0, "rollout.prompts_per_step": 2, "rollout.group_size": 2}
    changes = {
        "samples": {
            "rejection.prompts": 4,
            "rejection.k": 2,
            "rejection.max_new_tokens": 8,
            "rejection.threshold": 0,
            "rejection.keep_truncated": True,
        },  # fmt: skip
        "pruned": {"spec": "keep=0"},
        "sequence": {"train.max_steps": 2},
        "token": {"train.max_steps": 2},
        "on_policy": {f"on_policy.{key}": value for key, value in small.items()},
    }
    stages = []
    for stage in default_stages():
        stage.settings.update(small if stage.kind == "grpo" else changes[stage.name])
        stages.append(to_dict(stage))
    compare = {"compare.n": 4, "compare.k": 2, "compare.max_new_tokens": 8}
    return settings_overrides({"model": "tiny-random", **compare, "stages": stages})


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
    from grpolab.stages.prune import PruneConfig
    from grpolab.stages.sample import SampleConfig
    from grpolab.stages.sft import SFTConfig

    where = f"stages.{index}"
    pipeline = plan.config
    model = plan.model(stage.model, f"{where}.model")
    common = {"output_dir": str(plan.stage_dir(stage.name)), "overwrite": True, "seed": pipeline.seed}
    engine = {"engine": pipeline.engine, "dtype": pipeline.dtype}
    settings = dict(stage.settings)
    if stage.kind == "grpo":
        generation = {"rollout.engine": pipeline.engine, "rollout.dtype": pipeline.dtype}
        root, values = Config, {"model": model, "task": pipeline.task, **generation}
    elif stage.kind == "sft":
        root, values = SFTConfig, {"model": model, "data": plan.data(stage.data, f"{where}.data")}
    elif stage.kind == "sample":
        root, values = SampleConfig, {"model": model, "task": pipeline.task, **engine}
    elif stage.kind == "prune":  # the stage's model is its folder's final/, as every stage's that makes one
        common["output_dir"] = str(plan.stage_dir(stage.name) / "final")
        root, values = PruneConfig, {"model": model, "task": pipeline.task}
    elif stage.kind == "distill":
        on_policy = stage.settings.get("method") == "on_policy"  # the student samples: no teacher data
        data = "" if on_policy else plan.data(stage.data, f"{where}.data")
        root, values = DistillConfig, {"teacher": model, "task": pipeline.task, "data": data, **engine}
        if settings.get("student.model") in plan.kinds:  # a student made by an earlier stage (e.g. prune)
            settings["student.model"] = plan.model(settings["student.model"], f"{where}.settings.student.model")
    else:
        root, values = EvalRunConfig, {"model": model, "task": pipeline.task, **engine}
    try:
        if stage.kind == "distill":
            refuse_old_keys(stage.settings)
        return load_config(None, settings_overrides({**common, **values, **settings}), root=root)
    except ConfigError as error:
        raise ConfigError(f"{where} ({stage.name}): {error}") from None


def run_stage(kind: str, config) -> None:
    from grpolab.stages.distill import distill
    from grpolab.stages.prune import prune
    from grpolab.stages.sample import rejection_sample
    from grpolab.stages.sft import sft
    from grpolab.training.trainer import train

    work = {"grpo": train, "sft": sft, "sample": rejection_sample, "prune": prune, "distill": distill, "eval": evaluate}
    work[kind](config)


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
    for row in rows:  # what each model cost: its stage's seconds, the teacher samples it learned from
        stage = next((stage for stage in config.stages if stage.name == row["label"]), None)
        row["train_seconds"] = timings.get(row["label"])
        row["teacher_samples"] = teacher_samples(configs[config.stages.index(stage)]) if stage else None
    summary = {"rows": rows, "stage_seconds": timings}
    table = format_table(rows, label="label", extra=("teacher_samples", "train_seconds"))
    write_text_atomic(run_dir / "comparison.md", table + "\n")
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    write_json_atomic(run_dir / "comparison.json", summary)
    log(f"\nheld-out comparison on {config.task} (greedy{'' if config.compare.k == 1 else ', k samples'}):")
    log(table)
    log(f"pipeline folder: {run_dir}")
    return summary


def teacher_samples(stage_config) -> int | None:
    """The teacher samples a distillation stage learned from: the rejection-sampled rows it trained on (sequence,
    token), or the student's completions the teacher scored (on_policy); None for the other stages."""
    from grpolab.stages.distill import DistillConfig, on_policy_config

    if not isinstance(stage_config, DistillConfig):
        return None
    if stage_config.method != "on_policy":
        return sum(1 for line in Path(stage_config.data).read_text().splitlines() if line.strip())
    run = on_policy_config(stage_config)
    steps = sum(1 for _ in (run.run_dir() / "metrics.jsonl").open())
    return steps * run.rollout.prompts_per_step * run.rollout.group_size


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
