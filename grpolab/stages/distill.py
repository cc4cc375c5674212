"""`grpolab distill`: train a student on a teacher's outputs.

- method=sequence (what R1 did for its distilled models): SFT of the student on the teacher's
  rejection-sampled samples (`data`, e.g. `grpolab sample`'s data.jsonl). With `data` empty the teacher is
  sampled first, into `teacher_samples/` inside the run folder, with the `rejection.*` settings (the keys
  `grpolab sample` has; the old spelling `sample.*` is refused, naming the new key).
- method=token: on the same samples, the student minimises KL(teacher || student) over the teacher's top-k
  tokens at every assistant position (`algorithms/distillation.py`); the teacher's logits are computed on
  the fly, one forward pass per micro-batch without gradients. This needs a shared vocabulary.
- method=on_policy (GKD / on-policy distillation): the student samples the task's prompts and is trained by
  `grpolab train algorithm=on_policy_distill`, the teacher in the reference's place and the per-token
  advantage -(log p_student - log p_teacher) (`training/experience.py`); no reward enters the loss. The
  `on_policy.*` keys are that run's `grpolab train` keys (e.g. on_policy.train.max_steps=30); the run folder
  is a training run's. It needs a shared vocabulary and an existing student.

The student is an existing model (`student.model`, by default SmolLM2-135M with half its layers kept by
measured importance, `prune:smollm2-135m:half`, grpolab/model/prune.py) or, when that is empty, a fresh Llama
built from the `student.*` sizes with the teacher's tokenizer: with SmolLM2's 49k vocabulary, hidden size 64
and two layers make about 3.3M parameters, most of them the (tied) embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from grpolab.algorithms.distillation import topk_kl
from grpolab.config import GenerationRunConfig, LogConfig, RewardConfig, check_ranges, to_yaml
from grpolab.errors import ConfigError, UserError
from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path
from grpolab.model.precision import default_device
from grpolab.runs.folder import prepare_run_dir, save_model_atomic, write_text_atomic
from grpolab.stages.sample import REJECTION_RANGES, RejectionConfig, SampleConfig, rejection_sample
from grpolab.stages.sft import TRAIN_RANGES, SFTTrainConfig, cross_entropy_sum, fit, learned_hidden, prepare_rows
from grpolab.stages.sft_data import read_records


@dataclass
class StudentConfig:
    # an existing student (a model name, folder or prune:<model>:<spec>); empty builds a fresh Llama of the sizes below
    model: str = "prune:smollm2-135m:half"
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048


@dataclass
class DistillConfig(GenerationRunConfig):
    teacher: str = "smollm2-135m"
    task: str = "arithmetic"  # whose prompts and rewards are used when the teacher is sampled here
    data: str = ""  # SFT-ready JSONL of teacher samples; empty samples the teacher first
    method: Literal["sequence", "token", "on_policy"] = "sequence"
    top_k: int = 20  # teacher tokens per position for method=token
    temperature: float = 1.0  # distillation temperature for method=token
    name: str = "distill-{task}-{time}"
    student: StudentConfig = field(default_factory=StudentConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)  # sampling the teacher (grpolab sample's keys)
    # a fresh student needs a far larger learning rate than fine-tuning does
    train: SFTTrainConfig = field(default_factory=lambda: SFTTrainConfig(learning_rate=1e-3, epochs=3))
    log: LogConfig = field(default_factory=LogConfig)
    on_policy: dict[str, Any] = field(default_factory=dict)  # method=on_policy: `grpolab train` keys of its run

    def validate(self) -> None:
        ranges = {
            "top_k": (lambda v: v >= 1, "an integer >= 1"),
            "temperature": (lambda v: v > 0, "a float > 0"),
            "student.hidden_size": (lambda v: v >= 1, "an integer >= 1"),
            "student.intermediate_size": (lambda v: v >= 1, "an integer >= 1"),
            "student.num_layers": (lambda v: v >= 1, "an integer >= 1"),
            "student.num_heads": (lambda v: v >= 1, "an integer >= 1"),
            "student.num_kv_heads": (lambda v: v >= 1, "an integer >= 1"),
            **TRAIN_RANGES,
            **{f"rejection.{key}": check for key, check in REJECTION_RANGES.items()},
        }
        check_ranges(self, ranges)
        student = self.student
        if student.hidden_size % student.num_heads or student.num_heads % student.num_kv_heads:
            raise ConfigError(
                "student: hidden_size must be divisible by num_heads, and num_heads by num_kv_heads "
                f"(got {student.hidden_size}, {student.num_heads}, {student.num_kv_heads})"
            )
        if not self.teacher:
            raise ConfigError("teacher: must name a model (smollm2-135m, tiny-random, a folder or a hub id)")


# method=on_policy's run, sized for a 2-core CPU like the default GRPO run; `on_policy.*` overrides these
ON_POLICY_DEFAULTS = {
    "rollout.prompts_per_step": 8,
    "rollout.group_size": 4,
    "rollout.max_new_tokens": 32,
    "train.learning_rate": 2e-5,
    "train.max_steps": 30,
}
ON_POLICY_SET_HERE = {  # on_policy.<key> -> the distill key that sets it
    "model": "student.model", "teacher": "teacher", "task": "task", "seed": "seed", "algorithm": "method",
    "output_dir": "output_dir", "overwrite": "overwrite", "name": "name",
}  # fmt: skip


def on_policy_config(config: DistillConfig):
    """The `grpolab train algorithm=on_policy_distill` config of method=on_policy, in the distill run folder."""
    from grpolab.config import Config, flatten, load_config, settings_overrides, to_dict

    if not config.student.model:
        raise ConfigError("student.model: method=on_policy needs an existing student (e.g. prune:smollm2-135m:half)")
    if config.data:
        raise ConfigError("data: method=on_policy samples the student itself; leave data empty")
    for key in config.on_policy:
        if key.split(".")[0] in ON_POLICY_SET_HERE:
            raise ConfigError(f"on_policy.{key}: is set by distill's own key {ON_POLICY_SET_HERE[key.split('.')[0]]}")
    values = {
        **ON_POLICY_DEFAULTS, "grpo.beta": 0.0, "rollout.engine": config.engine, "rollout.dtype": config.dtype,
        **{f"log.{key}": value for key, value in to_dict(config.log).items()},
        **flatten(config.on_policy),
        "model": config.student.model, "teacher": config.teacher, "task": config.task, "seed": config.seed,
        "algorithm": "on_policy_distill", "output_dir": str(config.run_dir()), "overwrite": config.overwrite,
        "name": config.name,
    }  # fmt: skip
    return load_config(None, settings_overrides(values), root=Config)


def refuse_old_keys(keys) -> None:
    """Refuse distill's old section name `sample` (now `rejection`, as in `grpolab sample`) in one line naming
    the new key; `keys` are the override keys, or a YAML file's or a pipeline stage's top-level keys."""
    for key in keys:
        section, _, rest = str(key).partition(".")
        if section == "sample":
            raise ConfigError(f"distill: sample.* is now rejection.* (e.g. rejection.{rest or 'threshold'}=...)")


def build_student(config: StudentConfig, teacher, tokenizer, seed: int):
    """A fresh Llama with the teacher's vocabulary and special tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=teacher.config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=teacher.config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    student = LlamaForCausalLM(llama)
    student.generation_config.pad_token_id = tokenizer.pad_token_id
    student.generation_config.eos_token_id = teacher.generation_config.eos_token_id
    return student


def teacher_data(config: DistillConfig, run_dir: Path, log) -> str:
    """The SFT data: `data`, or the teacher's rejection samples drawn now."""
    if config.data:
        return config.data
    sampling = SampleConfig(
        model=config.teacher,
        task=config.task,
        output_dir=str(run_dir / "teacher_samples"),
        seed=config.seed,
        engine=config.engine,
        dtype=config.dtype,
        reward=config.reward,
        rejection=config.rejection,
    )
    return str(rejection_sample(sampling, log=log) / "data.jsonl")


def token_level_loss(teacher, top_k: int, temperature: float):
    """The per-micro-batch loss for method=token: summed top-k KL over the learned positions."""

    def loss_sum(student, batch: dict, device: torch.device) -> torch.Tensor:
        hidden, _ = learned_hidden(student, batch, device)  # [N, H]
        with torch.no_grad():
            teacher_hidden, _ = learned_hidden(teacher, batch, device)
            teacher_logits = teacher.get_output_embeddings()(teacher_hidden)  # [N, V]
        student_logits = student.get_output_embeddings()(hidden)  # [N, V]
        return topk_kl(teacher_logits, student_logits, top_k, temperature).sum()

    return loss_sum


def distill(config: DistillConfig, log=print) -> Path:
    """Distil as configured; returns the run folder (with final/, the student)."""
    if config.method == "on_policy":
        from grpolab.training.trainer import train

        return train(on_policy_config(config), log)
    if config.on_policy:
        raise ConfigError("on_policy: its keys are for method=on_policy only")
    if config.data:
        read_records(config.data)  # bad data fails before the folder is touched
    run_dir = prepare_run_dir(config.run_dir(), config.overwrite)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    data = teacher_data(config, run_dir, log)
    device = default_device()
    teacher_path = resolve_model_path(config.teacher, log=log)
    tokenizer = load_tokenizer(teacher_path)
    teacher = load_model(teacher_path).to(device).eval().requires_grad_(False)
    if config.student.model:
        student_path = resolve_model_path(config.student.model, log=log)
        student_tokenizer = load_tokenizer(student_path)
        student = load_model(student_path).to(device)
        if config.method == "token" and student_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UserError("student.model: method=token needs the teacher's vocabulary; use method=sequence")
        tokenizer = student_tokenizer
    else:
        student = build_student(config.student, teacher, tokenizer, config.seed).to(device)
    rows = prepare_rows(tokenizer, read_records(data), config.train, config.seed)
    parameters = sum(p.numel() for p in student.parameters())
    log(f"distill ({config.method}): student of {parameters:,} parameters, {len(rows)} packed rows")
    if config.method == "token":
        loss = token_level_loss(teacher, config.top_k, config.temperature)
    else:
        loss = cross_entropy_sum
        del teacher  # not needed once the samples exist
    steps = fit(student, rows, tokenizer.pad_token_id, config.train, run_dir, loss, config.log, config.seed, log)
    save_model_atomic(student, tokenizer, run_dir / "final")
    log(f"distill: {steps} steps; student saved to {run_dir / 'final'}")
    return run_dir
