"""Everything a GRPO run holds, built once before its first step (`setup` -> `TrainingRun`): the task and its
reward runner, the run folder (locked), the policy with LoRA and attention choices, the scorer to train
through, the reference and the engine's weights for one process, DDP or FSDP (`build_models`), the optimizer
and schedule; and what a resume restores, what a checkpoint saves. What can be refused is checked before
the run folder is touched."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from grpolab.config import Config
from grpolab.engine import make_engine
from grpolab.errors import ConfigError, TaskError
from grpolab.model.attention import use_cpu_attention
from grpolab.model.checkpointing import enable_activation_checkpointing
from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path, sparse_embedding_gradients
from grpolab.model.lora import apply_lora
from grpolab.model.precision import default_device, use_bf16
from grpolab.model.scoring import CompletionScorer
from grpolab.model.value import ValueModel
from grpolab.parallel.distributed import Parallel
from grpolab.rewards.runner import RewardRunner, resolve_weights
from grpolab.rollout.batch import PromptFit
from grpolab.runs.checkpoint import load_checkpoint, save_checkpoint, truncate_metrics
from grpolab.runs.folder import (
    RunLock,
    open_run_dir,
)
from grpolab.runs.sharded_checkpoint import is_sharded, load_sharded_checkpoint, save_sharded_checkpoint
from grpolab.runs.tracking import check_backends
from grpolab.tasks import Task, get_task
from grpolab.training.iterative import IterativeRL
from grpolab.training.optimizers import StepInBackward, make_optimizer
from grpolab.training.reference import Reference, packed_reference_dtype


@dataclass
class TrainingRun:
    """Everything one GRPO run holds, built once by `setup` and passed to each step."""

    config: Config
    run_dir: Path
    task: Task
    eval_examples: list[dict]  # the first eval.n of the task's held-out split
    rewards: RewardRunner
    tokenizer: object
    policy: torch.nn.Module  # the causal LM (its weights sharded in place under FSDP)
    scorer: torch.nn.Module  # what the loss calls for log-probs: the policy in a CompletionScorer (in DDP / FSDP)
    rollout_model: torch.nn.Module  # full weights for the engine and final/: the policy, or its copy under FSDP
    reference: Reference | None  # None when beta = 0: no reference model at all
    value_model: torch.nn.Module | None  # PPO's value model (in DDP with many processes); None for GRPO
    iterations: IterativeRL
    engine: object
    optimizer: torch.optim.Optimizer
    step_in_backward: StepInBackward | None  # train.optimizer_in_backward: the updates run in the backward pass
    scheduler: object
    bf16: bool
    device: torch.device
    parallel: Parallel
    lock: RunLock | None  # rank 0's lock on the run folder
    rollouts: object = None  # rollout.workers > 0: the workers' side (training/async_rollouts.WorkerRollouts)


def setup(config: Config, log, parallel: Parallel) -> tuple[TrainingRun, Path | None]:
    # Everything that can be refused is checked before the run folder is touched.
    task = get_task(config.task, config.reward, config.template)
    check_task(task, config)
    weights = resolve_weights(task, config.reward.weights)
    check_backends(config.log)
    eval_examples = task.eval_examples(config.eval.n)  # data that cannot load, or too few rows, fail here
    on_device = parallel.device if parallel.active else default_device()
    if config.train.activation_offload and on_device.type == "cpu":
        raise ConfigError("train.activation_offload: offloads to host memory from a GPU; this run is on the CPU")
    teacher_path = check_teacher(config, log)  # on_policy_distill: a teacher with another tokenizer is refused here
    locks: list[RunLock] = []  # the lock stays with rank 0; only the folder and checkpoint are broadcast
    run_dir, checkpoint = parallel.on_main(lambda: open_locked(config, locks))  # rank 0 writes the run folder
    lock = locks[0] if locks else None
    reward = config.reward
    rewards = RewardRunner(
        task.reward_functions(), weights, reward.on_error, reward.timeout_seconds, reward.num_workers
    )
    torch.manual_seed(config.seed)
    policy, tokenizer = parallel.local_main_first(lambda: load_policy(config, on_device, log))
    drop_overlong_rows(task, tokenizer, policy, config, log)
    bf16 = use_bf16(config.train.precision, on_device)
    if not parallel.active:
        sparse_embedding_gradients(policy)  # a tied embedding's gradient: its used rows only (grpolab/model/loading.py)
    with_packed = config.grpo.beta > 0 and teacher_path is None  # a teacher takes the reference's place
    packed = packed_reference_dtype(config, policy, bf16) if with_packed else None
    scorer, rollout_model, reference = build_models(policy, parallel, config.grpo.beta > 0, bf16, packed)
    if teacher_path is not None:  # the teacher in the reference's place: it scores the policy's tokens
        teacher = parallel.local_main_first(lambda: load_model(teacher_path))
        if config.train.attention == "auto":
            use_cpu_attention(teacher)
        reference = Reference(policy, frozen=teacher.to(on_device).eval().requires_grad_(False))
    value_model = build_value_model(config, policy, on_device, parallel, log) if config.algorithm == "ppo" else None
    groups = [{"params": [p for p in scorer.parameters() if p.requires_grad]}]
    if value_model is not None:  # PPO: the value model's parameters, a group with its own learning rate
        groups.append({"params": list(value_model.parameters()), "lr": config.ppo.value_learning_rate})
    optimizer = make_optimizer(groups, config.train)
    step_in_backward = StepInBackward(optimizer, groups[0]["params"]) if config.train.optimizer_in_backward else None
    run = TrainingRun(
        config=config,
        run_dir=run_dir,
        task=task,
        eval_examples=eval_examples,
        rewards=rewards,
        tokenizer=tokenizer,
        policy=policy,
        scorer=scorer,
        rollout_model=rollout_model,
        reference=reference,
        value_model=value_model,
        iterations=IterativeRL(task, config.grpo.iteration_steps, config.grpo.replay_fraction, config.seed),
        engine=make_engine(
            config.rollout.engine, rollout_model, tokenizer, config.rollout.dtype, config.rollout.share_weights
        ),
        optimizer=optimizer,
        step_in_backward=step_in_backward,
        scheduler=make_scheduler(optimizer, config),
        bf16=bf16,
        device=on_device,
        parallel=parallel,
        lock=lock,
    )
    return run, checkpoint


def check_teacher(config: Config, log) -> str | None:
    """algorithm=on_policy_distill: the teacher's folder, refused in one line unless it speaks the policy's
    tokenizer (the advantage compares the two models' log-probs of the same token ids)."""
    if config.algorithm != "on_policy_distill":
        return None
    teacher_path = resolve_model_path(config.teacher, log=log)
    if load_tokenizer(teacher_path).get_vocab() != load_tokenizer(resolve_model_path(config.model)).get_vocab():
        raise ConfigError(
            "teacher: has another tokenizer than the model; on-policy (and token-level) distillation compare "
            "log-probs of the same tokens, so use grpolab distill method=sequence"
        )
    return teacher_path


def build_models(policy, parallel: Parallel, with_reference: bool, bf16: bool, packed_dtype=None):
    """(scorer to train through, full-weight model for the engine, reference or None). One process and DDP
    train the policy itself; FSDP shards it, so the engine gets an unsharded copy and the reference is sharded
    like the policy. `packed_dtype`: the reference is the engine's packed decoder in that dtype."""
    if not parallel.active or parallel.strategy == "ddp":
        reference = Reference(policy, bf16_matmuls=bf16, packed_dtype=packed_dtype) if with_reference else None
        return parallel.data_parallel(CompletionScorer(policy)), policy, reference
    rollout_model = copy.deepcopy(policy).requires_grad_(False)
    frozen = copy.deepcopy(policy).eval().requires_grad_(False) if with_reference else None
    scorer = parallel.shard(CompletionScorer(policy), bf16)
    reference = Reference(scorer, frozen=parallel.shard(CompletionScorer(frozen), bf16)) if with_reference else None
    return scorer, rollout_model, reference


def build_value_model(config: Config, policy, device, parallel: Parallel, log):
    """PPO's value model (grpolab/model/value.py): the policy's decoder copied, or `ppo.value_model`'s."""
    source = policy
    if config.ppo.value_model:
        source = load_model(resolve_model_path(config.ppo.value_model, log=log)).to(device)
        if config.train.attention == "auto":
            use_cpu_attention(source)
    return parallel.data_parallel(ValueModel(source).to(device))


def load_policy(config: Config, target, log):
    model_path = resolve_model_path(config.model, log=log)
    tokenizer = load_tokenizer(model_path)
    policy = load_model(model_path).to(target)
    if config.train.attention == "auto":
        use_cpu_attention(policy)  # matmul attention on CPU for short rows (grpolab/model/attention.py)
    if config.lora.rank:
        lora = config.lora
        policy = apply_lora(policy, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
    if config.train.activation_checkpointing:
        enable_activation_checkpointing(policy, offload=config.train.activation_offload)
    return policy, tokenizer


def drop_overlong_rows(task, tokenizer, policy, config: Config, log) -> None:
    """Rows whose prompt leaves no room for the new tokens in the model's context are found when the data
    loads, not when a step draws them: training rows are skipped (counted, in one line), held-out rows among
    the evaluated ones refuse the run (skipping them would change what `eval.n` measures)."""
    context = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
    if not context:
        return
    new_tokens = max(config.rollout.max_new_tokens, config.eval.max_new_tokens)
    if new_tokens >= context:
        raise ConfigError(f"rollout.max_new_tokens / eval.max_new_tokens: a prompt + {new_tokens} new tokens exceeds "
                          f"the model's context of {context} tokens; lower them")  # fmt: skip
    dropped = task.drop_rows(PromptFit(tokenizer, task, context, new_tokens))
    evaluated = [index for index in dropped["held_out"] if index < config.eval.n]
    where = f"+ {new_tokens} new tokens exceed the model's context of {context} tokens"
    if evaluated:
        raise TaskError(f"held-out row {evaluated[0]}: its prompt {where}; shorten it or lower eval.n")
    if dropped["train"]:
        try:
            next(task.train_stream(config.seed))
        except TaskError:
            raise TaskError(f"every training row's prompt {where}") from None
        log(f"skipped {len(dropped['train'])} training row(s) whose prompt {where} (first: row {dropped['train'][0]})")


def check_task(task, config: Config) -> None:
    if config.grpo.advantage == "process" and type(task).step_rewards is Task.step_rewards:
        raise ConfigError(f"grpo.advantage: 'process' needs step rewards, and task {task.name!r} has none")


def open_locked(config: Config, locks: list) -> tuple[Path, Path | None]:
    run_dir, checkpoint, lock = open_run_dir(config)
    locks.append(lock)
    return run_dir, checkpoint


def make_scheduler(optimizer, config: Config):
    train = config.train

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / (train.warmup_steps + 1)
        progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
        if train.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if train.lr_scheduler == "linear":
            return 1 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restore(run: TrainingRun, checkpoint: Path | None, log) -> dict:
    """The trainer state of a fresh run, or the one saved in `checkpoint` (weights etc. are loaded in place)."""
    if checkpoint is None:
        return {"examples_consumed": 0, "nonfinite_in_a_row": 0, "eval": {}, "reference_resets": 0}
    sharded = run.parallel.active and run.parallel.strategy == "fsdp"
    if is_sharded(checkpoint) != sharded:
        raise ConfigError(f"resume: {checkpoint} was not written with parallel.strategy={run.config.parallel.strategy}")
    if sharded:
        resets = json.loads((checkpoint / "trainer_state.json").read_text())["reference_resets"]
        state = load_sharded_checkpoint(checkpoint, run, saved_reference(run, resets))
    else:
        state = load_checkpoint(checkpoint, run.policy, run.optimizer, run.scheduler)
        if run.value_model is not None:
            unwrapped(run.value_model).load_state_dict(load_file(str(checkpoint / "value.safetensors")))
    if run.reference is not None:
        run.reference.resets = state["reference_resets"]
        if run.reference.frozen is not None and state["reference_resets"] and not sharded:
            weights = load_file(str(checkpoint / "reference.safetensors"))
            run.reference.frozen.load_state_dict(weights, strict=False)
    run.parallel.sync_rollout_model(run.scorer, run.rollout_model)
    run.engine.sync_weights(run.rollout_model)
    if run.parallel.is_main:
        truncate_metrics(run.run_dir / "metrics.jsonl", state["step"])
        truncate_metrics(run.run_dir / "samples.jsonl", state["step"])
    log(f"resuming {run.run_dir} from {checkpoint.name}")
    return state


class CountingStream:
    """The task's training stream, counting what was drawn so that a resumed run continues where it stopped."""

    def __init__(self, stream, skip: int):
        self.stream, self.consumed = stream, 0
        for _ in range(skip):
            next(self)

    def __next__(self):
        self.consumed += 1
        return next(self.stream)


def saved_reference(run: TrainingRun, resets: int):
    """A frozen reference that was reset is no longer the base model: it is saved too. (With LoRA the reset
    reference lives in the policy's base weights, which the checkpoint holds anyway.)"""
    reference = run.reference
    return reference.frozen if reference is not None and reference.frozen is not None and resets else None


def save_training_checkpoint(run: TrainingRun, step: int, state: dict) -> None:
    keep, reference = run.config.train.keep_checkpoints, saved_reference(run, state["reference_resets"])
    if run.parallel.active and run.parallel.strategy == "fsdp":
        save_sharded_checkpoint(run.run_dir, step, run, state, keep, reference)
    elif run.parallel.is_main:  # DDP: every rank holds the same weights and optimizer state
        extra = {"reference": reference} if reference is not None else {}
        if run.value_model is not None:
            extra["value"] = unwrapped(run.value_model)
        save_checkpoint(run.run_dir, step, run.policy, run.optimizer, run.scheduler, state, keep, extra)
    run.parallel.barrier()


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (its state dict without the `module.` prefix)."""
    return getattr(model, "module", model)
