"""The GRPO training loop (DeepSeekMath section 4, ALGORITHMS.md sections 1-4), top to bottom:

    for each step:
        sample N prompts, G completions each (the rollout engine); with dynamic sampling, more rounds
        score them with the task's rule-based rewards (+ DAPO's soft overlong punishment)
        old log-probs once per rollout (only when mu > 1 or the KL is in the reward),
        reference log-probs (only when beta > 0: no reference model is loaded otherwise)
        advantages: group-normalised outcome, process (step rewards), or online RFT's 1[correct]
        mu optimisation passes over the rollout, each one optimizer step with exact gradient accumulation
        every K steps / at the end of an outer iteration: pi_ref <- pi_theta (and retrain reward models)

The batch shaping lives in `batch_shaping.py`, LoRA and the reference in `lora.py`, the outer iterations in
`iterative.py`. Compute runs in bf16 autocast where the hardware supports it, with fp32 master weights and
optimizer state.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from grpolab import batch_shaping
from grpolab.algorithms.advantages import compute_advantages, rft_coefficients
from grpolab.algorithms.logprobs import completion_logprobs
from grpolab.algorithms.losses import KL_ESTIMATORS
from grpolab.algorithms.objective import Normalisers, grpo_loss
from grpolab.algorithms.shaping import kl_penalised_rewards, zero_variance_groups
from grpolab.config import Config, ConfigError, to_yaml
from grpolab.engine import SamplingParams, make_engine
from grpolab.evaluation import greedy_accuracy
from grpolab.hardware import device, use_bf16
from grpolab.iterative import IterativeRL
from grpolab.lora import Reference, apply_lora, save_policy
from grpolab.models import load_model, load_tokenizer, resolve_model_path
from grpolab.progress import Progress
from grpolab.rollout import collect_rollout, micro_batches
from grpolab.runs import MetricsWriter, prepare_run_dir, save_model_atomic, write_json_atomic, write_text_atomic
from grpolab.tasks import Task, get_task


def autocast_context(bf16: bool, on: torch.device):
    return torch.autocast(on.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def resolve_weights(task, overrides: dict[str, float]) -> dict[str, float]:
    weights = dict(task.default_weights())
    for name, weight in overrides.items():
        if name not in task.reward_functions():
            allowed = ", ".join(task.reward_functions())
            raise ConfigError(f"reward.weights.{name}: task {task.name!r} has no such reward (allowed: {allowed})")
        weights[name] = weight
    return weights


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


@torch.no_grad()
def batch_logprobs(model, batch, size: int, temperature: float, bf16: bool, on) -> torch.Tensor:
    """Log-probs of the rollout's tokens under `model` (no gradient), [B, T]."""
    out = torch.zeros_like(batch.sampling_logprobs)
    for rows, (p_ids, p_mask, c_ids, c_mask) in micro_batches(batch, size):
        with autocast_context(bf16, on):
            logprobs, _ = completion_logprobs(
                model, p_ids.to(on), p_mask.to(on), c_ids.to(on), c_mask.to(on), temperature
            )
        out[rows, : logprobs.shape[1]] = logprobs.float().cpu()
    return out


def optimisation_pass(policy, batch, shaped, config: Config, bf16: bool, on):
    """One pass over the rollout in micro-batches, accumulating gradients of the full-batch loss."""
    mask, advantages = shaped.loss_mask, shaped.advantages  # [B, T], [B, 1] or [B, T]
    old_logprobs, ref_logprobs = shaped.old_logprobs, shaped.ref_logprobs
    normalisers = Normalisers(max(1, int(mask.any(1).sum())), float(mask.sum()), config.rollout.max_new_tokens)
    totals: dict[str, float] = {"loss": 0.0}
    current = torch.zeros_like(batch.sampling_logprobs)
    for rows, (p_ids, p_mask, c_ids, c_mask) in micro_batches(batch, config.train.micro_batch_size):
        width = c_ids.shape[1]
        with autocast_context(bf16, on):
            logprobs, entropy = completion_logprobs(
                policy,
                p_ids.to(on),
                p_mask.to(on),
                c_ids.to(on),
                c_mask.to(on),
                config.rollout.temperature,
                with_entropy=True,
            )
        logprobs = logprobs.float()
        old = logprobs.detach() if old_logprobs is None else old_logprobs[rows, :width].to(on)
        ref = None if ref_logprobs is None else ref_logprobs[rows, :width].to(on)
        row_advantages = advantages[rows, : width if advantages.shape[1] > 1 else 1].to(on)
        row_mask = mask[rows, :width].to(on)
        loss, stats = grpo_loss(logprobs, old, ref, row_advantages, row_mask, config.grpo, normalisers, entropy.float())
        loss.backward()
        share = row_mask.sum().item() / max(normalisers.num_tokens, 1.0)  # token-weighted share for logging means
        totals["loss"] += loss.item()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value * share
        current[rows, :width] = logprobs.detach().cpu()
    return totals, current


@dataclass
class ShapedBatch:
    """What the loss needs besides the rollout itself."""

    loss_mask: torch.Tensor  # [B, T] completion mask, minus overlong-filtered rows
    advantages: torch.Tensor  # [B, 1] outcome / online RFT, or [B, T] process supervision
    old_logprobs: torch.Tensor | None  # [B, T], None when mu = 1 and the KL is not in the reward
    ref_logprobs: torch.Tensor | None  # [B, T], None when beta = 0
    stats: dict


def sample_rollout(engine, tokenizer, task, stream, weights, config: Config, step: int):
    """Generate and score N groups (more rounds with dynamic sampling); returns (batch, stats)."""
    rollout, grpo = config.rollout, config.grpo
    rounds = iter(range(grpo.dynamic_sampling_max_rounds))

    def generate(examples):
        params = SamplingParams(
            max_new_tokens=rollout.max_new_tokens,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            top_k=rollout.top_k,
            stop_strings=list(task.stop_strings),
            seed=(config.seed * 1_000_003 + step) * 31 + next(rounds),
        )
        batch = collect_rollout(engine, tokenizer, task, examples, rollout.group_size, params, weights)
        if grpo.overlong_buffer:  # DAPO's soft overlong punishment is part of the reward
            batch_shaping.add_overlong_penalty(
                batch, rollout.max_new_tokens, grpo.overlong_buffer, grpo.overlong_penalty
            )
        return batch

    draw = lambda n: [next(stream) for _ in range(n)]
    if grpo.dynamic_sampling:
        return batch_shaping.dynamic_sampling(
            generate, draw, rollout.prompts_per_step, grpo.dynamic_sampling_max_rounds, tokenizer.pad_token_id
        )
    batch = generate(draw(rollout.prompts_per_step))
    zero = zero_variance_groups(batch.rewards).float().mean().item()
    return batch, {"groups_dropped": 0, "sampling_rounds": 1, "zero_std_groups_frac": zero}


def shape_batch(policy, reference, batch, task, tokenizer, config: Config, bf16: bool, on, timer) -> ShapedBatch:
    """Loss mask, old and reference log-probs, and advantages for one rollout batch."""
    grpo, size, temperature = config.grpo, config.train.micro_batch_size, config.rollout.temperature
    old_logprobs = ref_logprobs = None
    if grpo.mu > 1 or grpo.kl_in_reward:  # fixed for the mu passes; with mu = 1 the pass uses its own
        with timer("old_logprobs"):
            old_logprobs = batch_logprobs(policy, batch, size, temperature, bf16, on)
    if reference is not None:
        with timer("reference"), reference.model() as model:
            ref_logprobs = batch_logprobs(model, batch, size, temperature, bf16, on)
    rewards, stats = batch.rewards, {}
    if grpo.kl_in_reward:
        kl = KL_ESTIMATORS[grpo.kl_estimator](old_logprobs, ref_logprobs)  # [B, T]
        rewards, sequence_kl = kl_penalised_rewards(rewards, kl, batch.completion_mask, grpo.beta)
        stats["kl_in_reward"] = sequence_kl.mean().item()
    if grpo.algorithm == "online_rft":  # DeepSeekMath section 5: coefficient 1 on correct samples
        advantages = rft_coefficients(batch.correct).unsqueeze(1)  # [B, 1]
    elif grpo.advantage == "process":
        advantages = batch_shaping.process_advantages_for_batch(batch, task, tokenizer)  # [B, T]
    else:
        scored = batch_shaping.scored_mask(batch)  # [N, G]
        advantages = compute_advantages(rewards, grpo.advantage, scored).reshape(-1, 1)  # [B, 1]
    mask = batch_shaping.loss_mask(batch, grpo.overlong_filter)
    stats["overlong_filtered_frac"] = 1.0 - mask.any(1).float().mean().item() if grpo.overlong_filter else 0.0
    return ShapedBatch(mask, advantages, old_logprobs, ref_logprobs, stats)


def load_policy(config: Config, on, log):
    model_path = resolve_model_path(config.model, log=log)
    tokenizer = load_tokenizer(model_path)
    policy = load_model(model_path).to(on)
    if config.lora.rank:
        lora = config.lora
        policy = apply_lora(policy, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
    return policy, tokenizer


def check_task(task, config: Config) -> None:
    if config.grpo.advantage == "process" and type(task).step_rewards is Task.step_rewards:
        raise ConfigError(f"grpo.advantage: 'process' needs step rewards, and task {task.name!r} has none")


def train(config: Config, log=print) -> Path:
    """Run GRPO as configured; returns the run folder."""
    run_dir = prepare_run_dir(config.run_dir(), config.overwrite)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    torch.manual_seed(config.seed)
    on = device()
    task = get_task(config.task, config.template)
    check_task(task, config)
    weights = resolve_weights(task, config.reward.weights)
    policy, tokenizer = load_policy(config, on, log)
    bf16 = use_bf16(config.train.precision, on)
    reference = Reference(policy) if config.grpo.beta > 0 else None  # beta = 0: no reference at all
    iterations = IterativeRL(task, config.grpo.iteration_steps, config.grpo.replay_fraction, config.seed)
    engine = make_engine(config.rollout.engine, policy, tokenizer, config.rollout.dtype)
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad],
        lr=config.train.learning_rate,
        betas=(config.train.adam_beta1, config.train.adam_beta2),
        weight_decay=config.train.weight_decay,
    )
    scheduler = make_scheduler(optimizer, config)
    metrics_writer = MetricsWriter(run_dir / "metrics.jsonl")
    eval_examples = task.eval_examples(config.eval.n)
    results = {"n": len(eval_examples)}
    progress = Progress(config.train.max_steps, config.log.quiet, config.log.every)
    if config.eval.before and eval_examples:
        accuracy, _ = greedy_accuracy(
            engine, tokenizer, task, eval_examples, config.eval.max_new_tokens, config.eval.batch_size
        )
        results["before"] = {"accuracy": accuracy}
        progress.message(f"held-out accuracy before training: {accuracy:.3f} (n={len(eval_examples)})")
    stream = task.train_stream(config.seed)
    for step in range(1, config.train.max_steps + 1):
        timer = Timer()
        with timer("generate"):
            policy.eval()
            batch, sampling_stats = sample_rollout(engine, tokenizer, task, stream, weights, config, step)
        shaped = shape_batch(policy, reference, batch, task, tokenizer, config, bf16, on, timer)
        policy.train()
        for update in range(config.grpo.mu):
            with timer("policy"):
                optimizer.zero_grad(set_to_none=True)
                stats, current = optimisation_pass(policy, batch, shaped, config, bf16, on)
            with timer("optimizer"):
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.train.max_grad_norm).item()
                optimizer.step()
            if update == 0:
                first_stats, first_logprobs = stats, current
        scheduler.step()
        engine.sync_weights(policy)
        iterations.record(batch)
        extra = {**sampling_stats, **shaped.stats}
        if iterations.ends_iteration(step):  # DeepSeekMath Algorithm 1: retrain reward models, then reset
            extra.update(iterations.end_iteration())
        reset_every = config.grpo.ref_reset_every
        if reference is not None and (iterations.ends_iteration(step) or reset_every and step % reset_every == 0):
            reference.reset()  # pi_ref <- pi_theta (R1: every K steps)
        record = step_metrics(step, batch, first_stats, first_logprobs, grad_norm, scheduler, timer)
        record.update(extra)
        metrics_writer.write(record)
        progress.update(record)
    progress.close()
    if config.eval.after and eval_examples:
        accuracy, samples = greedy_accuracy(
            engine, tokenizer, task, eval_examples, config.eval.max_new_tokens, config.eval.batch_size
        )
        results["after"] = {"accuracy": accuracy}
    write_json_atomic(run_dir / "eval.json", results)
    adapter_applies = reference is None or reference.resets == 0
    save_policy(policy, tokenizer, run_dir, adapter_applies, save_model_atomic, log)
    log(summary_line(results, run_dir))
    return run_dir


def summary_line(results: dict, run_dir: Path) -> str:
    before = results.get("before", {}).get("accuracy")
    after = results.get("after", {}).get("accuracy")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    return f"held-out accuracy (n={results['n']}): before {fmt(before)} -> after {fmt(after)}; run folder: {run_dir}"


class Timer:
    """Per-phase wall-clock seconds of one step."""

    def __init__(self):
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        begin = time.perf_counter()
        yield
        self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - begin

    def total(self) -> float:
        return time.perf_counter() - self.start


def step_metrics(step, batch, stats, trainer_logprobs, grad_norm, scheduler, timer) -> dict:
    mask = batch.completion_mask.float()
    lengths = mask.sum(1)
    rewards = batch.rewards
    seconds = timer.total()
    record = {
        "step": step,
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "accuracy": sum(batch.correct) / len(batch.correct),
        "kl": stats.get("kl", 0.0),
        "loss": stats["loss"],
        "entropy": stats.get("entropy", 0.0),
        "clip_low_frac": stats["clip_low_frac"],
        "clip_high_frac": stats["clip_high_frac"],
        "grad_norm": grad_norm,
        "learning_rate": scheduler.get_last_lr()[0],
        "completion_len_mean": lengths.mean().item(),
        "truncated_frac": sum(c.finish_reason == "length" for c in batch.completions) / len(batch.completions),
        "logprob_mismatch": ((batch.sampling_logprobs - trainer_logprobs).abs() * mask).sum().item()
        / max(1.0, mask.sum().item()),
        "step_seconds": seconds,
        "tokens_per_second": mask.sum().item() / seconds,
    }
    for name, values in batch.reward_parts.items():
        present = [v for v in values if v is not None]
        record[f"rewards/{name}"] = sum(present) / len(present) if present else None
    for phase, value in timer.phases.items():
        record[f"time/{phase}"] = value
    return record
