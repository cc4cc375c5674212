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
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from grpolab.algorithms.advantages import compute_advantages
from grpolab.algorithms.logprobs import completion_logprobs
from grpolab.algorithms.objective import Normalisers, grpo_loss
from grpolab.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_metrics
from grpolab.config import Config, to_yaml
from grpolab.engine import SamplingParams, make_engine
from grpolab.evaluation import greedy_accuracy
from grpolab.hardware import device, use_bf16
from grpolab.models import load_model, load_tokenizer, resolve_model_path
from grpolab.progress import Progress
from grpolab.rewards.runner import RewardRunner, resolve_weights
from grpolab.rollout import collect_rollout, micro_batches
from grpolab.runs import MetricsWriter, prepare_run_dir, save_model_atomic, write_json_atomic, write_text_atomic
from grpolab.tasks import get_task
from grpolab.tracking import Tracker, check_backends, sample_due, sample_rows


def autocast_context(bf16: bool, on: torch.device):
    return torch.autocast(on.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


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


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite updates); printed as one line."""


class StopRequest:
    """SIGINT / SIGTERM ask for a checkpoint at the next step boundary instead of dying mid-update."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def open_run_dir(config: Config) -> tuple[Path, Path | None]:
    """A fresh run folder, or (with `resume=true`) the existing one and its newest complete checkpoint."""
    run_dir = config.run_dir()
    if not config.resume:
        prepare_run_dir(run_dir, config.overwrite)
        write_text_atomic(run_dir / "config.yaml", to_yaml(config))
        return run_dir, None
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"resume: {str(run_dir)!r} holds no run (no config.yaml)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:  # crashed before its first checkpoint: start again in the same folder
        truncate_metrics(run_dir / "metrics.jsonl", 0)
    return run_dir, checkpoint


@dataclass
class TrainingRun:
    """Everything one GRPO run holds, built once by `setup` and passed to each step."""

    config: Config
    run_dir: Path
    task: object
    rewards: RewardRunner
    tokenizer: object
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    engine: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    bf16: bool
    device: torch.device


def setup(config: Config, log) -> tuple[TrainingRun, Path | None]:
    task = get_task(config.task, config.reward)  # before the run folder: a bad task or weight leaves nothing
    weights = resolve_weights(task, config.reward.weights)
    check_backends(config.log)  # a requested but missing wandb / trackio fails in one line, nothing written
    run_dir, checkpoint = open_run_dir(config)
    reward = config.reward
    rewards = RewardRunner(
        task.reward_functions(), weights, reward.on_error, reward.timeout_seconds, reward.num_workers
    )
    torch.manual_seed(config.seed)
    on = device()
    model_path = resolve_model_path(config.model, log=log)
    tokenizer = load_tokenizer(model_path)
    policy = load_model(model_path).to(on)
    reference = None
    if config.grpo.beta > 0:  # no reference model at all when beta = 0
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=config.train.learning_rate,
        betas=(config.train.adam_beta1, config.train.adam_beta2),
        weight_decay=config.train.weight_decay,
    )
    engine = make_engine(config.rollout.engine, policy, tokenizer, config.rollout.dtype)
    bf16 = use_bf16(config.train.precision, on)
    run = TrainingRun(
        config,
        run_dir,
        task,
        rewards,
        tokenizer,
        policy,
        reference,
        engine,
        optimizer,
        make_scheduler(optimizer, config),
        bf16,
        on,
    )
    return run, checkpoint


def restore(run: TrainingRun, checkpoint: Path | None, log) -> dict:
    """The trainer state of a fresh run, or the one saved in `checkpoint` (weights etc. are loaded in place)."""
    if checkpoint is None:
        return {"examples_consumed": 0, "nonfinite_in_a_row": 0, "eval": {}}
    state = load_checkpoint(checkpoint, run.policy, run.optimizer, run.scheduler)
    if run.reference is not None and "reference_step" in state:
        run.reference.load_state_dict(load_file(str(checkpoint / "reference.safetensors")), strict=False)
    run.engine.sync_weights(run.policy)
    truncate_metrics(run.run_dir / "metrics.jsonl", state["step"])
    log(f"resuming {run.run_dir} from {checkpoint.name}")
    return state


def evaluate(run: TrainingRun, examples: list[dict]) -> float:
    accuracy, _ = greedy_accuracy(
        run.engine, run.tokenizer, run.task, examples, run.config.eval.max_new_tokens, run.config.eval.batch_size
    )
    return accuracy


def train(config: Config, log=print) -> Path:
    """Run GRPO as configured; returns the run folder."""
    run, checkpoint = setup(config, log)
    state = restore(run, checkpoint, log)
    run_dir, task = run.run_dir, run.task
    metrics_writer = MetricsWriter(run_dir / "metrics.jsonl")
    tracker = Tracker(config, run_dir)
    eval_examples = task.eval_examples(config.eval.n)
    progress = Progress(config.train.max_steps, config.log.quiet, config.log.every)
    if config.eval.before and eval_examples and "before" not in state["eval"]:
        state["eval"]["before"] = {"accuracy": evaluate(run, eval_examples)}
        progress.message(f"held-out accuracy before training: {state['eval']['before']['accuracy']:.3f}")
    stream = task.train_stream(config.seed)
    for _ in range(state["examples_consumed"]):  # the data stream resumes where the checkpoint left it
        next(stream)
    with StopRequest() as stop:
        for step in range(state.get("step", 0) + 1, config.train.max_steps + 1):
            examples = [next(stream) for _ in range(config.rollout.prompts_per_step)]
            state["examples_consumed"] += len(examples)
            record, batch = grpo_step(run, step, examples)
            check_finite(record, state, config)
            if config.grpo.ref_reset_every and run.reference is not None and step % config.grpo.ref_reset_every == 0:
                run.reference.load_state_dict(run.policy.state_dict())  # R1: pi_ref <- pi_theta every K steps
                state["reference_step"] = step
            metrics_writer.write(record)
            tracker.log(record, step)
            if sample_due(step, config.log.samples_every, config.train.max_steps):
                tracker.log_samples(sample_rows(step, batch, task, config.log.samples_prompts), step)
            progress.update(record)
            state["step"] = step
            last = step == config.train.max_steps
            if stop.requested or (config.train.save_every and step % config.train.save_every == 0 and not last):
                save_training_checkpoint(run, step, state)
            if stop.requested:
                progress.close()
                tracker.close()
                run.rewards.close()
                log(f"stopped at step {step}; checkpoint saved. Resume with: grpolab train --resume {run_dir}")
                return run_dir
    progress.close()
    run.rewards.close()
    results = {"n": len(eval_examples), **state["eval"]}
    if config.eval.after and eval_examples:
        results["after"] = {"accuracy": evaluate(run, eval_examples)}
    write_json_atomic(run_dir / "eval.json", results)
    tracker.log_eval(results, config.train.max_steps)
    tracker.close()
    save_model_atomic(run.policy, run.tokenizer, run_dir / "final")
    log(summary_line(results, run_dir))
    if config.log.report:
        write_run_report(run_dir, log)
    return run_dir


def grpo_step(run: TrainingRun, step: int, examples: list[dict]):
    """One GRPO step: rollout, advantages, reference / old log-probs, mu optimisation passes.
    Returns (metrics record, rollout batch)."""
    config, policy, optimizer = run.config, run.policy, run.optimizer
    timer = Timer()
    rollout = config.rollout
    params = SamplingParams(
        max_new_tokens=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        seed=config.seed * 1_000_003 + step,
    )
    with timer("generate"):
        policy.eval()
        batch = collect_rollout(run.engine, run.tokenizer, run.task, examples, rollout.group_size, params, run.rewards)
    advantages = compute_advantages(batch.rewards, config.grpo.advantage).reshape(-1, 1)  # [B, 1]
    old_logprobs = ref_logprobs = None
    size = config.train.micro_batch_size
    if config.grpo.mu > 1:
        with timer("old_logprobs"):
            old_logprobs = batch_logprobs(policy, batch, size, rollout.temperature, run.bf16, run.device)
    if run.reference is not None:
        with timer("reference"):
            ref_logprobs = batch_logprobs(run.reference, batch, size, rollout.temperature, run.bf16, run.device)
    policy.train()
    skipped = 0
    for update in range(config.grpo.mu):
        with timer("policy"):
            optimizer.zero_grad(set_to_none=True)
            stats, current = optimisation_pass(
                policy, batch, advantages, old_logprobs, ref_logprobs, config, run.bf16, run.device
            )
        with timer("optimizer"):
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.train.max_grad_norm).item()
            if math.isfinite(grad_norm) and math.isfinite(stats["loss"]):
                optimizer.step()
            else:  # a non-finite update is skipped, never applied
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
        if update == 0:
            first_stats, first_logprobs = stats, current
    run.scheduler.step()
    run.engine.sync_weights(policy)
    record = step_metrics(step, batch, first_stats, first_logprobs, grad_norm, run.scheduler, timer)
    record["skipped_updates"] = skipped
    return record, batch


def check_finite(record: dict, state: dict, config: Config) -> None:
    if record["skipped_updates"] == 0:
        state["nonfinite_in_a_row"] = 0
        return
    state["nonfinite_in_a_row"] += 1
    if state["nonfinite_in_a_row"] >= config.train.max_nonfinite_steps:
        raise TrainingError(
            f"step {record['step']}: non-finite loss or gradients in {state['nonfinite_in_a_row']} steps in a row "
            f"(train.max_nonfinite_steps={config.train.max_nonfinite_steps}); "
            "lower train.learning_rate or check the data"
        )


def save_training_checkpoint(run: TrainingRun, step: int, state: dict) -> None:
    # A reference that was reset is no longer the base model: it is saved too.
    extra = {"reference": run.reference} if run.reference is not None and "reference_step" in state else {}
    keep = run.config.train.keep_checkpoints
    save_checkpoint(run.run_dir, step, run.policy, run.optimizer, run.scheduler, state, keep, extra)


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
