"""The GRPO training loop (DeepSeekMath section 4, ALGORITHMS.md sections 1-2), top to bottom:

    for each step:
        sample N prompts, G completions each (the rollout engine)
        score them with the task's rule-based rewards
        group-normalised advantages, one per completion, broadcast over its tokens
        old log-probs once per rollout (only when mu > 1: with mu = 1 they equal the current ones),
        reference log-probs (only when beta > 0: no reference model is loaded otherwise)
        mu optimisation passes over the rollout, each one optimizer step with exact gradient accumulation

Compute runs in bf16 autocast where the hardware supports it, with fp32 master weights and optimizer state.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path

import torch

from grpolab.algorithms.advantages import compute_advantages
from grpolab.algorithms.logprobs import completion_logprobs
from grpolab.algorithms.objective import Normalisers, grpo_loss
from grpolab.config import Config, ConfigError, to_yaml
from grpolab.engine import SamplingParams, make_engine
from grpolab.evaluation import greedy_accuracy
from grpolab.hardware import device, use_bf16
from grpolab.models import load_model, load_tokenizer, resolve_model_path
from grpolab.progress import Progress
from grpolab.rollout import collect_rollout, micro_batches
from grpolab.runs import MetricsWriter, prepare_run_dir, save_model_atomic, write_json_atomic, write_text_atomic
from grpolab.tasks import get_task
from grpolab.tracking import Tracker, check_backends, sample_due, sample_rows


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


def optimisation_pass(policy, batch, advantages, old_logprobs, ref_logprobs, config: Config, bf16: bool, on):
    """One pass over the rollout in micro-batches, accumulating gradients of the full-batch loss."""
    mask = batch.completion_mask
    normalisers = Normalisers(mask.shape[0], float(mask.sum()), int(mask.sum(1).max()))
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
        loss, stats = grpo_loss(
            logprobs, old, ref, advantages[rows].to(on), c_mask.to(on), config.grpo, normalisers, entropy.float()
        )
        loss.backward()
        share = c_mask.sum().item() / normalisers.num_tokens  # token-weighted share for logging means
        totals["loss"] += loss.item()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value * share
        current[rows, :width] = logprobs.detach().cpu()
    return totals, current


def train(config: Config, log=print) -> Path:
    """Run GRPO as configured; returns the run folder."""
    check_backends(config.log)  # before anything is written: a missing wandb/trackio fails in one line
    run_dir = prepare_run_dir(config.run_dir(), config.overwrite)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    torch.manual_seed(config.seed)
    on = device()
    task = get_task(config.task)
    weights = resolve_weights(task, config.reward.weights)
    model_path = resolve_model_path(config.model, log=log)
    tokenizer = load_tokenizer(model_path)
    policy = load_model(model_path).to(on)
    bf16 = use_bf16(config.train.precision, on)
    reference = None
    if config.grpo.beta > 0:  # no reference model at all when beta = 0
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    engine = make_engine(config.rollout.engine, policy, tokenizer, config.rollout.dtype)
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=config.train.learning_rate,
        betas=(config.train.adam_beta1, config.train.adam_beta2),
        weight_decay=config.train.weight_decay,
    )
    scheduler = make_scheduler(optimizer, config)
    metrics_writer = MetricsWriter(run_dir / "metrics.jsonl")
    tracker = Tracker(config, run_dir)
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
    rollout = config.rollout
    for step in range(1, config.train.max_steps + 1):
        timer = Timer()
        examples = [next(stream) for _ in range(rollout.prompts_per_step)]
        params = SamplingParams(
            max_new_tokens=rollout.max_new_tokens,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            top_k=rollout.top_k,
            seed=config.seed * 1_000_003 + step,
        )
        with timer("generate"):
            policy.eval()
            batch = collect_rollout(engine, tokenizer, task, examples, rollout.group_size, params, weights)
        advantages = compute_advantages(batch.rewards, config.grpo.advantage).reshape(-1, 1)  # [B, 1]
        old_logprobs = ref_logprobs = None
        if config.grpo.mu > 1:
            with timer("old_logprobs"):
                old_logprobs = batch_logprobs(
                    policy, batch, config.train.micro_batch_size, rollout.temperature, bf16, on
                )
        if reference is not None:
            with timer("reference"):
                ref_logprobs = batch_logprobs(
                    reference, batch, config.train.micro_batch_size, rollout.temperature, bf16, on
                )
        policy.train()
        for update in range(config.grpo.mu):
            with timer("policy"):
                optimizer.zero_grad(set_to_none=True)
                stats, current = optimisation_pass(
                    policy, batch, advantages, old_logprobs, ref_logprobs, config, bf16, on
                )
            with timer("optimizer"):
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.train.max_grad_norm).item()
                optimizer.step()
            if update == 0:
                first_stats, first_logprobs = stats, current
        scheduler.step()
        engine.sync_weights(policy)
        if config.grpo.ref_reset_every and reference is not None and step % config.grpo.ref_reset_every == 0:
            reference.load_state_dict(policy.state_dict())  # R1: pi_ref <- pi_theta every K steps
        record = step_metrics(step, batch, first_stats, first_logprobs, grad_norm, scheduler, timer)
        metrics_writer.write(record)
        tracker.log(record, step)
        if sample_due(step, config.log.samples_every, config.train.max_steps):
            tracker.log_samples(sample_rows(step, batch, task, config.log.samples_prompts), step)
        progress.update(record)
    progress.close()
    if config.eval.after and eval_examples:
        accuracy, samples = greedy_accuracy(
            engine, tokenizer, task, eval_examples, config.eval.max_new_tokens, config.eval.batch_size
        )
        results["after"] = {"accuracy": accuracy}
    write_json_atomic(run_dir / "eval.json", results)
    tracker.log_eval(results, config.train.max_steps)
    tracker.close()
    save_model_atomic(policy, tokenizer, run_dir / "final")
    log(summary_line(results, run_dir))
    if config.log.report:
        write_run_report(run_dir, log)
    return run_dir


def write_run_report(run_dir: Path, log) -> None:
    """report.md and plots at the end of a run. The model and metrics are saved by now, so a failing report
    must not turn a finished run into a failed one: it is reported in one line with the command to retry."""
    from grpolab.report import write_report

    try:
        log(f"report: {write_report([run_dir])}")
    except Exception as error:  # any plotting failure: the run itself is complete
        log(f"report: not written ({type(error).__name__}: {error}); retry with `grpolab report {run_dir}`")


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
        "zero_std_groups_frac": (rewards.std(dim=1) == 0).float().mean().item(),
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
