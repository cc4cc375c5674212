"""The checks across keys of a `Config` (grpolab/config/schema.py), run when it is built; each refuses in one
line what would be ignored or fail later."""

from __future__ import annotations

from typing import Any

from grpolab.errors import ConfigError


def validate_grpo(config) -> None:
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
    validate_reference(config)


def validate_reference(config) -> None:
    """`train.reference_forward=packed` (grpolab/training/reference.py): what it cannot run with, refused before the
    run folder is made (the model's type is checked when the model is loaded: `packed_reference_dtype`)."""
    if config.train.reference_forward != "packed":
        return
    refused = {
        "lora.rank": (config.lora.rank > 0, "with LoRA the reference is the policy with its adapter off, no copy"),
        "parallel.strategy=fsdp": (config.parallel.strategy == "fsdp", "the reference is sharded like the policy"),
        "grpo.ref_reset_every": (config.grpo.ref_reset_every > 0, "a reset reference is checkpointed as a model"),
        "grpo.iteration_steps": (config.grpo.iteration_steps > 0, "a reset reference is checkpointed as a model"),
    }
    for key, (set_, why) in refused.items():
        if set_:
            raise ConfigError(f"train.reference_forward: packed does not run with {key} ({why}); use transformers")


def validate_workers(config) -> None:
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


def validate_memory(config) -> None:
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
    if rollout.dtype == "int8" and (rollout.engine != "grpolab" or config.lora.rank):
        raise ConfigError("rollout.dtype=int8: the grpolab engine's packed path only (rollout.engine=grpolab, no LoRA: "
                          "the adapter lives outside the packed weights)")  # fmt: skip


def validate_ppo(config) -> None:
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


def validate_distillation(config) -> None:
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
