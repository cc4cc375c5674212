"""Typed configuration: one dataclass per concern, loaded from YAML plus `key.sub=value` overrides.

Every field is validated when the config is built, and a bad key or value raises `ConfigError` whose
message names the key and what is allowed, in one line. The resolved config is saved verbatim into the
run folder (`config.yaml`), so a run can always be reproduced from its own folder.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import math
import re
import textwrap
import time
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from grpolab import plugins
from grpolab.errors import ConfigError


@dataclass
class RunConfig:
    """The keys of every command that writes a run folder; each root config below builds on it."""

    output_dir: str = ""  # the run folder (empty: runs/<name>)
    name: str = "run-{time}"  # the folder under runs/ when output_dir is empty ({task}, {time} filled in)
    overwrite: bool = False  # replace an existing run folder of this name
    seed: int = 0  # seeds sampling, data order and any freshly built weights

    def run_dir(self) -> Path:
        """The run folder: output_dir as given, else runs/<name> with its {task} and {time} filled in. The first
        call records the folder in output_dir (and the name it took), so later calls name the same folder and
        config.yaml says where the run went."""
        self.name, self.output_dir = run_place(self)
        return Path(self.output_dir)

    def validate(self) -> None:
        """Checks across keys, run when the config is built; a root config adds its own."""


@dataclass
class GenerationRunConfig(RunConfig):
    """A command that generates with an engine (eval, sample, distill, pipeline)."""

    engine: Literal["grpolab", "hf"] = "grpolab"  # grpolab: the rollout engine; hf: transformers' generate
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # the engine's compute dtype (auto: bf16 where the CPU has it)


@dataclass
class RolloutConfig:
    engine: Literal["grpolab", "hf"] = "grpolab"
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    # prompts per engine call (0: all of this process's prompts at once); each call is seeded by the global index
    # of its first prompt, so a run split over processes samples what one process with this setting samples
    generation_batch: int = 0
    # true: the engine generates from the trainer's own weights through the transformers forward (no second copy;
    # needs rollout.dtype=fp32, the trainer's dtype); false: its own packed copy (faster decoding)
    share_weights: bool = False
    # > 0: this many processes run the engine and the rewards apart from the trainer (grpolab/rollout/workers.py);
    # a step trains on a rollout sampled by weights at most max_staleness optimizer steps old (0: today's loop)
    workers: int = 0
    max_staleness: int = 0
    worker_threads: int = 1  # torch threads of each rollout worker


@dataclass
class TrainConfig:
    max_steps: int = 100
    learning_rate: float = 2e-5
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    # adamw: fp32 moments (torch's fused AdamW); adamw_8bit: block-wise 8-bit moments, ~2 bytes a parameter
    # instead of 8 (grpolab/training/optimizers.py)
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    # each parameter updated as soon as its gradient is ready, then the gradient freed: needs the whole rollout
    # in one micro-batch and train.max_grad_norm=0
    optimizer_in_backward: bool = False
    activation_checkpointing: bool = False  # keep each decoder layer's input only; recompute the rest in backward
    activation_offload: bool = False  # with activation_checkpointing on a GPU: those inputs in host memory
    # > 0: before the first step, `grpolab plan`'s worst-case step; the run is refused if its peak would exceed this
    memory_limit_gb: float = 0.0
    micro_batch_size: int = 16
    micro_batch_tokens: int = 0  # > 0: micro-batches by padded-token budget instead of micro_batch_size rows
    # rows per no-gradient scoring pass (reference / old-policy log-probs): these keep no activations for a
    # backward pass, so they can be larger than micro_batch_size (one 32-row pass measured ~15% faster than 4 x 8)
    scoring_batch_size: int = 64
    # auto: on CPU, attention of short rows as fp32 matmuls + softmax instead of the SDPA kernel (grpolab/attention.py)
    attention: Literal["auto", "sdpa"] = "auto"
    share_prompts: bool = True  # one prompt pass per micro-batch, its keys / values shared by its completions
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    save_every: int = 25
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 3
    max_minutes: float = 11.0  # a time budget for the training steps (0: none); evaluation runs after it
    threads: int = 0  # torch threads of the trainer (0: torch's default, one per core)


@dataclass
class GRPOConfig:
    """Every variant is its own field; ALGORITHMS.md gives the formula each one selects."""

    beta: float = 0.04
    kl_in_reward: bool = False  # PPO style: r_i - beta * sum_t KL_t instead of + beta * KL in the loss
    mu: int = 1
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    advantage: Literal["group", "batch", "none", "rloo", "process"] = "group"
    ratio_level: Literal["token", "sequence"] = "token"
    aggregation: Literal["sequence", "token", "constant"] = "sequence"
    entropy_coef: float = 0.0
    ref_reset_every: int = 0
    # The engine samples with its own kernels (bf16, KV cache), so its pi_old differs from the trainer's by rounding
    # (measured on SmolLM2 bf16: mean |delta log p| 0.035 per token). Truncated importance weights correct for it:
    # (choice: beyond ALGORITHMS.md; TIS, Yao et al. 2025) none | token | sequence, capped at rollout_cap; the masked
    # variants drop tokens / sequences whose weight leaves [1/rollout_cap, rollout_cap] instead (MIS)
    rollout_correction: Literal["none", "token", "sequence", "token_mask", "sequence_mask"] = "token"
    rollout_cap: float = 2.0
    # DAPO batch shaping (ALGORITHMS.md section 3)
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 4  # generation rounds per step before training on a part-full batch
    overlong_filter: bool = False
    # Iterative RL (DeepSeekMath Algorithm 1): every `iteration_steps` steps reset pi_ref and retrain reward models
    iteration_steps: int = 0
    replay_fraction: float = 0.1


@dataclass
class PPOConfig:
    """PPO with a value model (algorithm=ppo, ALGORITHMS.md section 7): GRPO's clip (grpo.eps_low / eps_high),
    beta and KL estimator are shared; the KL is always in the reward, as k1 per token."""

    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    value_model: str = ""  # a model whose decoder starts the value model (empty: a copy of the policy's)
    value_learning_rate: float = 5e-5  # the value model's own learning rate (same schedule as the policy's)
    value_clip: float = 0.2  # eps_v: the value loss clips V to V_old +- value_clip
    epochs: int = 1  # optimisation passes over each rollout with fixed old policy and old values (GRPO's mu)
    whiten_advantages: bool = True  # normalise the advantages over the batch's tokens


@dataclass
class LoraConfig:
    """LoRA through peft; rank 0 trains every weight."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = "all-linear"  # comma-separated module names, or peft's "all-linear"


@dataclass
class RewardConfig:
    """Weights of the reward functions by name (an empty map uses the task's defaults), your own reward
    functions, how they run (grpolab/rewards/runner.py) and the options of the optional rewards
    (grpolab/rewards/optional.py)."""

    weights: dict[str, float] = field(default_factory=dict)
    # your own reward functions, FILE.py:NAME or MODULE:NAME (grpolab/plugins.py), each f(completion, example)
    # -> float | None, weight 1 unless reward.weights.NAME says otherwise, logged as rewards/NAME
    functions: list[str] = field(default_factory=list)
    on_error: Literal["raise", "zero"] = "raise"
    timeout_seconds: float = 30.0
    num_workers: int = 2
    language: str = "en"
    overlong_buffer: float = 0.2
    code_partial: bool = False
    model: str = ""


@dataclass
class EvalConfig:
    n: int = 64
    before: bool = True
    after: bool = True
    max_new_tokens: int = 32
    batch_size: int = 64
    every: int = 0  # held-out greedy accuracy every N steps too (eval/accuracy in metrics.jsonl); 0: before / after


@dataclass
class LogConfig:
    """Where a run's progress goes (see grpolab/progress.py and grpolab/tracking.py)."""

    quiet: bool = False
    every: int = 1
    samples_every: int = 10  # sample table every N steps (and at the first and last); 0 turns it off
    samples_prompts: int = 2  # the first prompts of the step whose G completions go into the table
    tensorboard: bool = True
    wandb: bool = False  # needs `pip install wandb`
    trackio: bool = False  # needs `pip install trackio`
    project: str = "grpolab"  # the wandb / trackio project
    report: bool = True  # write report.md and plots into the run folder at the end


@dataclass
class ParallelConfig:
    """Many processes (grpolab/parallel/distributed.py): launched by torchrun or `grpolab train --nproc N`."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 `fully_shard`, weights/grads/optimizer state sharded
    cpu_offload: bool = False  # fsdp on GPUs: keep the sharded weights and optimizer state in CPU memory


@dataclass
class Config(RunConfig):
    """`grpolab train`: GRPO and its variants."""

    name: str = "grpo-{task}-{time}"
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    template: Literal["default", "r1_zero"] = "default"  # r1_zero: the R1-Zero prompt and <think>/<answer> rewards
    # grpo: group-normalised advantages; online_rft: gradient coefficient 1[correct]; ppo: a value model and GAE;
    # on_policy_distill: the per-token advantage -(log p_policy - log p_teacher), the teacher in the reference's place
    algorithm: Literal["grpo", "online_rft", "ppo", "on_policy_distill"] = "grpo"
    teacher: str = ""  # algorithm=on_policy_distill: a model with the policy's tokenizer
    resume: bool = False
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        """The ranges, then the checks across keys. What needs the world size or the task is checked where those
        are known: `parallel.distributed.check_world` and `training.setup.check_task`."""
        check_ranges(self, RANGES)
        validate_grpo(self)
        # the user's code by absolute path: config.yaml then finds it from any folder (grpolab/plugins.py)
        self.reward.functions = [plugins.absolute(spec) for spec in self.reward.functions]
        self.task = plugins.absolute(self.task)


# Range checks: key -> (predicate, what is allowed). Cross-field checks live in `validate`.
RANGES: dict[str, tuple[Any, str]] = {
    "rollout.prompts_per_step": (lambda v: v >= 1, "an integer >= 1"),
    "rollout.group_size": (lambda v: v >= 1, "an integer >= 1 (>= 2 for GRPO, which normalises within a group)"),
    "rollout.max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "rollout.temperature": (lambda v: v >= 0, "a float >= 0"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "rollout.top_k": (lambda v: v >= 0, "an integer >= 0 (0 disables top-k)"),
    "rollout.generation_batch": (lambda v: v >= 0, "an integer >= 0 (0: all prompts in one engine call)"),
    "train.max_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.learning_rate": (lambda v: v >= 0, "a float >= 0"),
    "train.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.weight_decay": (lambda v: v >= 0, "a float >= 0"),
    "train.max_grad_norm": (lambda v: v >= 0, "a float >= 0 (0: no clipping)"),
    "train.memory_limit_gb": (lambda v: v >= 0, "a float >= 0 (0: no memory check before the run)"),
    "train.micro_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.micro_batch_tokens": (lambda v: v >= 0, "an integer >= 0 (0: micro_batch_size rows)"),
    "train.scoring_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.save_every": (lambda v: v >= 0, "an integer >= 0 (0 saves no checkpoints)"),
    "train.keep_checkpoints": (lambda v: v >= 1, "an integer >= 1"),
    "train.max_minutes": (lambda v: v >= 0, "a float >= 0 (0: no time budget)"),
    "train.max_nonfinite_steps": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.beta": (lambda v: v >= 0, "a float >= 0"),
    "ppo.gamma": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "ppo.lam": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "ppo.value_learning_rate": (lambda v: v >= 0, "a float >= 0"),
    "ppo.value_clip": (lambda v: v > 0, "a float > 0"),
    "ppo.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.mu": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.eps_low": (lambda v: v >= 0, "a float >= 0 (>= 1 disables the lower clip, as R1 stage 1 with eps 10)"),
    "grpo.eps_high": (lambda v: v >= 0, "a float >= 0"),
    "grpo.ref_reset_every": (lambda v: v >= 0, "an integer >= 0 (0 never resets)"),
    "grpo.rollout_cap": (lambda v: v >= 1, "a float >= 1 (the largest importance weight of a sample)"),
    "rollout.workers": (lambda v: v >= 0, "an integer >= 0 (0: the trainer samples its own rollouts)"),
    "rollout.max_staleness": (lambda v: v >= 0, "an integer >= 0 (optimizer steps)"),
    "rollout.worker_threads": (lambda v: v >= 1, "an integer >= 1"),
    "train.threads": (lambda v: v >= 0, "an integer >= 0 (0: torch's default)"),
    "reward.timeout_seconds": (lambda v: v > 0, "a float > 0"),
    "reward.num_workers": (lambda v: v >= 0, "an integer >= 0 (0 scores in the trainer's process)"),
    "reward.overlong_buffer": (lambda v: 0 < v <= 1, "a float in (0, 1] (a fraction of max_new_tokens)"),
    "grpo.dynamic_sampling_max_rounds": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.iteration_steps": (lambda v: v >= 0, "an integer >= 0 (0: one iteration, no reward-model retraining)"),
    "grpo.replay_fraction": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "lora.rank": (lambda v: v >= 0, "an integer >= 0 (0 disables LoRA)"),
    "lora.alpha": (lambda v: v > 0, "a float > 0"),
    "lora.dropout": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "eval.n": (lambda v: v >= 0, "an integer >= 0"),
    "eval.max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.every": (lambda v: v >= 0, "an integer >= 0 (0: only before and after training)"),
    "log.every": (lambda v: v >= 1, "an integer >= 1"),
    "log.samples_every": (lambda v: v >= 0, "an integer >= 0 (0 turns the sample table off)"),
    "log.samples_prompts": (lambda v: v >= 1, "an integer >= 1"),
}


FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a float", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """Check `value` against the field type `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, expected {_describe(tp)}")
        return value
    if tp is Any:  # checked later by whatever consumes it (e.g. a pipeline stage's own config)
        return value
    if origin is list:
        if isinstance(value, str) and typing.get_args(tp) == (str,):
            value = [value]  # `reward.functions=my.py:f`: one item needs no brackets
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}, expected a list")
        (item_type,) = typing.get_args(tp)
        return [_coerce_item(f"{key}.{i}", item, item_type) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        _, value_type = typing.get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if tp is float:
        if isinstance(value, str) and FLOAT_TEXT.match(value.strip()):  # YAML 1.1 reads `1e-5` as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a float")
        if not math.isfinite(value):  # .inf / .nan / 1e400 would train to non-finite weights or never end
            raise ConfigError(f"{key}: got {value!r}, expected a finite float")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return value
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _coerce_item(key: str, value: Any, tp) -> Any:
    """A list item: a dataclass item is built from its mapping, key by key."""
    if not dataclasses.is_dataclass(tp):
        return _coerce(key, value, tp)
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: got {value!r}, expected a mapping of keys")
    item = tp()
    for sub_key, sub_value in value.items():
        _apply(item, [str(sub_key)], sub_value, f"{key}.{sub_key}")
    return item


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


MOVED = {"grpo.algorithm": "the top-level key algorithm (e.g. algorithm=online_rft)"}


def _apply(obj, key_path: list[str], value: Any, full_key: str) -> None:
    if full_key in MOVED:
        raise ConfigError(f"{full_key}: is now {MOVED[full_key]}")
    name, rest = key_path[0], key_path[1:]
    types_ = _field_types(type(obj))
    if name not in types_:
        allowed = ", ".join(sorted(types_))
        raise ConfigError(f"unknown config key {full_key!r} (allowed here: {allowed})")
    tp = types_[name]
    if dataclasses.is_dataclass(tp):
        if rest:
            _apply(getattr(obj, name), rest, value, full_key)
        elif isinstance(value, dict):
            for sub_key, sub_value in value.items():
                _apply(getattr(obj, name), [str(sub_key)], sub_value, f"{full_key}.{sub_key}")
        else:
            raise ConfigError(f"{full_key}: is a section; set its keys, e.g. {full_key}.<key>=value")
        return
    if rest and typing.get_origin(tp) is dict:
        _, value_type = typing.get_args(tp)
        getattr(obj, name)[".".join(rest)] = _coerce(full_key, value, value_type)
        return
    if rest:
        raise ConfigError(f"unknown config key {full_key!r} ({name} has no sub-keys)")
    setattr(obj, name, _coerce(full_key, value, tp))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def settings_overrides(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides whose values survive the YAML reading of `load_config` (JSON is YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping of keys as dotted keys (`{"grpo": {"beta": 0}}` -> `{"grpo.beta": 0}`); lists and the
    mapping of `reward.weights` stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" != "reward.weights":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def validate_grpo(config: Config) -> None:
    if config.algorithm not in ("ppo", "on_policy_distill") and config.rollout.group_size < 2:
        raise ConfigError(
            f"rollout.group_size: got {config.rollout.group_size}, expected an integer >= 2 "
            f"({config.algorithm} normalises within a group; algorithm=ppo takes 1)"
        )
    if config.algorithm == "ppo":
        validate_ppo(config)
    validate_distillation(config)
    if config.rollout.temperature == 0:
        raise ConfigError("rollout.temperature: 0 (greedy) gives G identical samples; use a temperature > 0")
    if not config.model:
        raise ConfigError("model: must name a model (smollm2-135m, tiny-random, a folder or a hub id)")
    if config.grpo.kl_in_reward and config.grpo.beta == 0:
        raise ConfigError("grpo.kl_in_reward: needs grpo.beta > 0 (beta is the coefficient of the KL in the reward)")
    if config.algorithm == "online_rft" and config.grpo.advantage != "group":
        raise ConfigError(
            f"grpo.advantage: {config.grpo.advantage!r} has no effect with algorithm=online_rft (its coefficient "
            "is 1[correct]); leave grpo.advantage at its default"
        )
    if config.grpo.kl_in_reward and (config.grpo.advantage == "process" or config.algorithm == "online_rft"):
        raise ConfigError("grpo.kl_in_reward: works with outcome rewards only (not process or online_rft)")
    if config.lora.rank and config.parallel.strategy == "fsdp":
        raise ConfigError("parallel.strategy: 'fsdp' with LoRA is not supported; use 'ddp' (LoRA trains few weights)")
    if config.lora.rank and not config.lora.target_modules.strip():
        raise ConfigError("lora.target_modules: must name modules (e.g. q_proj,v_proj) or be 'all-linear'")
    validate_memory(config)
    validate_workers(config)


def validate_workers(config: Config) -> None:
    """`rollout.workers`: what a rollout worker apart from the trainer cannot do yet, refused in one line."""
    rollout, grpo = config.rollout, config.grpo
    if grpo.rollout_correction.endswith("_mask") and grpo.rollout_cap <= 1:
        raise ConfigError("grpo.rollout_cap: the masked corrections keep weights in [1/cap, cap]; use a cap > 1")
    if rollout.max_staleness and not rollout.workers:
        raise ConfigError("rollout.max_staleness: needs rollout.workers >= 1 (without workers every rollout is fresh)")
    if not rollout.workers:
        return
    refused = {
        "grpo.dynamic_sampling": (grpo.dynamic_sampling, "draws prompts as it samples"),
        "grpo.iteration_steps": (grpo.iteration_steps != 0, "retrains reward models in the trainer"),
    }
    for key, (set_, why) in refused.items():
        if set_:
            raise ConfigError(f"{key}: not with rollout.workers yet ({why}); leave it at its default")


def validate_memory(config: Config) -> None:
    """The memory levers' requirements (grpolab/training/optimizers.py, grpolab/model/checkpointing.py)."""
    train, rollout = config.train, config.rollout
    if train.optimizer_in_backward:
        completions = rollout.prompts_per_step * rollout.group_size
        needs = {
            "train.max_grad_norm": (train.max_grad_norm != 0, "set it to 0: clipping needs every gradient at once"),
            "train.micro_batch_size": (
                train.micro_batch_size < completions or train.micro_batch_tokens,
                f"set it >= {completions} (the rollout's completions) and train.micro_batch_tokens=0: the update "
                "runs in the backward, so there is one backward per step, without accumulation",
            ),
            "algorithm": (config.algorithm == "ppo", "ppo is not supported with it (two models' gradients)"),
            "parallel.strategy": (config.parallel.strategy == "fsdp", "fsdp is not supported with it"),
        }
        for key, (refused, why) in needs.items():
            if refused:
                raise ConfigError(f"train.optimizer_in_backward: {key}: {why}")
    if train.activation_offload and not train.activation_checkpointing:
        raise ConfigError(
            "train.activation_offload: offloads the checkpoints, so it needs train.activation_checkpointing=true"
        )
    if rollout.share_weights and (rollout.dtype != "fp32" or rollout.engine != "grpolab"):
        raise ConfigError("rollout.share_weights: the engine shares the trainer's fp32 weights only with "
                          "rollout.engine=grpolab rollout.dtype=fp32")  # fmt: skip


def validate_ppo(config: Config) -> None:
    """What PPO does not combine with, each refused in one line rather than ignored."""
    grpo = config.grpo
    ignored = {
        "grpo.advantage": grpo.advantage != "group",  # PPO's advantages are GAE's
        "grpo.mu": grpo.mu != 1,  # PPO's passes are ppo.epochs
        "grpo.kl_in_reward": grpo.kl_in_reward,  # always in the reward under PPO
        "grpo.dynamic_sampling": grpo.dynamic_sampling,  # a group's spread means nothing to a value model
        "grpo.iteration_steps": grpo.iteration_steps != 0,
        "grpo.ratio_level": grpo.ratio_level != "token",
    }
    for key, set_ in ignored.items():
        if set_:
            raise ConfigError(f"{key}: has no meaning with algorithm=ppo; leave it at its default")
    if config.lora.rank:
        raise ConfigError("lora.rank: algorithm=ppo trains a full value model; LoRA is not supported with it")
    if config.parallel.strategy == "fsdp":
        raise ConfigError("parallel.strategy: 'fsdp' is not supported with algorithm=ppo; use 'ddp'")


def validate_distillation(config: Config) -> None:
    """algorithm=on_policy_distill: the teacher replaces the reference and the reward, so the keys that shape
    either are refused in one line rather than ignored."""
    if config.algorithm != "on_policy_distill":
        if config.teacher:
            raise ConfigError("teacher: is only used with algorithm=on_policy_distill")
        return
    grpo = config.grpo
    if not config.teacher:
        raise ConfigError("teacher: algorithm=on_policy_distill needs a teacher model (same tokenizer as model)")
    ignored = {
        "grpo.beta": (grpo.beta != 0, "set it to 0: the reverse KL to the teacher is the advantage itself"),
        "grpo.advantage": (grpo.advantage != "group", "the advantage is -(log p_policy - log p_teacher)"),
        "grpo.kl_in_reward": (grpo.kl_in_reward, "there is no reward in the advantage"),
        "grpo.ref_reset_every": (grpo.ref_reset_every != 0, "the teacher is never replaced by the policy"),
        "grpo.iteration_steps": (grpo.iteration_steps != 0, "the teacher is never replaced by the policy"),
        "grpo.dynamic_sampling": (grpo.dynamic_sampling, "it filters groups by their rewards"),
        "parallel.strategy": (config.parallel.strategy == "fsdp", "fsdp is not supported with it; use ddp"),
    }
    for key, (refused, why) in ignored.items():
        if refused:
            raise ConfigError(f"{key}: has no meaning with algorithm=on_policy_distill ({why})")


def check_ranges(config, ranges: dict[str, tuple[Any, str]]) -> None:
    """Raise ConfigError for the first dotted key (any depth) whose value fails its predicate."""
    for key, (ok, allowed) in ranges.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{key}: got {value!r}, expected {allowed}")


def load_config(path: str | None = None, overrides: list[str] | tuple = (), root: type = Config):
    """Build a validated config from an optional YAML file and `key=value` overrides (applied in order).

    `root` is the config dataclass to build: `Config` (GRPO) or another command's config; each root checks
    itself in its `validate()` method.
    """
    config = root()
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {error.start})") from None
        except OSError as error:
            raise ConfigError(f"config file {path!r} cannot be read: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path!r} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of keys")
        for key, value in data.items():
            _apply(config, [str(key)], value, str(key))
    for text in overrides:
        key, value = parse_override(text)
        _apply(config, key.split("."), value, key)
    if hasattr(config, "validate"):
        config.validate()
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def describe_keys(config=None, prefix: str = "") -> list[str]:
    """`key = default  (type) – what it is` lines for `--help`, the description taken from the field's comment."""
    config = config if config is not None else Config()
    lines = []
    for name, tp in _field_types(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(tp):
            lines.extend(describe_keys(value, f"{prefix}{name}."))
            continue
        line = f"  {prefix}{name} = {value!r}  ({_describe(tp)})"
        comment = field_comment(type(config), name)
        lines.append(f"{line} – {shortened(comment, HELP_WIDTH - len(line) - 3)}" if comment else line)
    return lines


HELP_WIDTH = 160  # a --help line's length beyond which a field's comment is cut


def field_comment(cls: type, name: str) -> str:
    """The comment of field `name`, from the nearest class in `cls`'s MRO whose body comments it (a root config
    that redeclares `name` with a new default keeps its base's description)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and field_comments(klass).get(name):
            return field_comments(klass)[name]
    return ""


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field declared in `cls`'s own body -> its comment: the `# ...` on its line, else the comment lines
    directly above it (no blank line between). Read from the class's source once."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source to read (a class built at run time, a frozen install)
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []  # comment lines since the last statement or blank line
    code: list[tokenize.TokenInfo] = []  # the current logical line's tokens
    trailing: list[str] = []  # comments inside the current logical line
    depth, previous = 0, None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.INDENT:
            depth += 1
        elif token.type == tokenize.DEDENT:
            depth -= 1
        elif token.type == tokenize.COMMENT:
            (trailing if code else above).append(token.string.lstrip("#").strip())
        elif token.type == tokenize.NL:
            if not code and previous != tokenize.COMMENT:  # a blank line ends a comment block
                above = []
        elif token.type == tokenize.NEWLINE:
            is_field = depth == 1 and len(code) > 1 and code[0].type == tokenize.NAME and code[1].string == ":"
            if is_field and (trailing or above):
                comments[code[0].string] = " ".join(trailing or above)
            above, code, trailing = [], [], []
        elif token.type != tokenize.ENDMARKER:
            code.append(token)
        previous = token.type
    return comments


def shortened(text: str, width: int) -> str:
    """`text` cut at a word boundary to at most `width` characters (at least 40), marked with an ellipsis."""
    width = max(width, 40)
    if len(text) <= width:
        return text
    return text[: width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def run_place(config) -> tuple[str, str]:
    """(name, output_dir) of a run. An output_dir is kept as given (a name still holding `{task}` or `{time}`,
    shown by trackers, becomes the folder's name); without one the folder is runs/<name>, with `{task}` and
    `{time}` filled in. A name with `{time}` is a new run's, so a folder already there (a run started in the same
    second) makes it `<name>-2`, `-3`, ...; and it never names a run to resume."""
    if config.output_dir:
        placeholders = "{task}" in config.name or "{time}" in config.name
        name = (Path(config.output_dir).name or "run") if placeholders else config.name
        return name, config.output_dir
    if "{time}" in config.name and getattr(config, "resume", False):
        raise ConfigError(
            "resume: say which run to continue: output_dir=RUN_DIR or name=NAME (or grpolab train --resume RUN_DIR)"
        )
    name = config.name
    if "{task}" in name:
        if not isinstance(getattr(config, "task", None), str):
            raise ConfigError(f"name: {name!r} uses {{task}}, and this command has no task key")
        name = name.replace("{task}", task_folder_name(config.task))
    if "{time}" not in name:
        return name, str(Path("runs") / name)
    name = chosen = name.replace("{time}", time.strftime("%Y%m%d-%H%M%S"))
    number = 1
    while (Path("runs") / chosen).exists():
        number += 1
        chosen = f"{name}-{number}"
    return chosen, str(Path("runs") / chosen)


def task_folder_name(task: str) -> str:
    """A task spec as part of a folder name: `jsonl:data/x.jsonl` -> `jsonl-x`, `hf:openai/gsm8k,split=test`
    -> `hf-gsm8k`, `my_tasks.py:Sorting` -> `my_tasks-Sorting`."""
    kind, _, source = task.partition(":")
    kind = Path(kind).stem if kind.endswith(".py") else kind
    source = Path(source.split(",")[0]).stem if source else ""
    text = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{kind}-{source}" if source else kind)
    return text.strip("-.")[:48].rstrip("-.") or "task"


__all__ = [
    "Config",
    "ConfigError",
    "check_ranges",
    "EvalConfig",
    "GenerationRunConfig",
    "GRPOConfig",
    "LoraConfig",
    "LogConfig",
    "ParallelConfig",
    "PPOConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainConfig",
    "describe_keys",
    "load_config",
    "to_yaml",
]
