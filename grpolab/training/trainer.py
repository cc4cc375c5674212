"""The GRPO training loop (DeepSeekMath section 4, ALGORITHMS.md sections 1-4), top to bottom:

    for each step:
        sample N prompts, G completions each (the rollout engine); with dynamic sampling, more rounds
        score them with the task's rule-based rewards (+ DAPO's soft overlong punishment)
        old log-probs once per rollout (only when mu > 1 or the KL is in the reward),
        reference log-probs (only when beta > 0: no reference model is loaded otherwise)
        advantages: group-normalised outcome, process (step rewards), or online RFT's 1[correct]
        mu optimisation passes over the rollout, each one optimizer step with exact gradient accumulation
        every K steps / at the end of an outer iteration: pi_ref <- pi_theta (and retrain reward models)

Read top-down: `train` -> `run_training` -> `training_loop` -> `grpo_step` -> `optimisation_pass`, helpers
after. The rollout comes from `grpolab/rollout/`, the experience (log-probs, advantages, masks) from
`training/experience.py`, the set-up and checkpoints from `training/setup.py`, the split over many processes
(torchrun, DDP / FSDP2) from `grpolab/parallel/` (ARCHITECTURE.md). Compute runs in bf16 autocast where the
hardware supports it, with fp32 master weights and optimizer state.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from grpolab.algorithms.objective import Normalisers, grpo_loss
from grpolab.config import Config
from grpolab.model.lora import save_policy
from grpolab.model.scoring import as_scorer
from grpolab.parallel import distributed
from grpolab.parallel.distributed import Parallel, Silent, silenced
from grpolab.rollout.evaluation import greedy_accuracy
from grpolab.rollout.sampling import sample_rollout
from grpolab.runs.folder import (
    MetricsWriter,
    StopRequest,
    check_finite,
    check_finite_weights,
    save_model_atomic,
    write_json_atomic,
)
from grpolab.runs.progress import Progress
from grpolab.runs.tracking import Tracker, sample_due, sample_rows
from grpolab.training.experience import shape_batch
from grpolab.training.metrics import Timer, step_metrics, summary_line
from grpolab.training.micro_batches import micro_batches, score
from grpolab.training.setup import CountingStream, TrainingRun, restore, save_training_checkpoint, setup


def train(config: Config, log=print) -> Path:
    """Run GRPO as configured; returns the run folder. Under torchrun, every process calls this."""
    parallel = distributed.init(config)
    try:
        if parallel.is_main:
            return run_training(config, parallel, log)
        return run_training(silenced(config), parallel, lambda *args: None)
    finally:
        parallel.close()


def run_training(config: Config, parallel: Parallel, log) -> Path:
    run, checkpoint = setup(config, log, parallel)
    try:
        state = restore(run, checkpoint, log)
        results = training_loop(run, state, log)
        if results is not None:
            finish(run, results, log)
    finally:  # the reward workers and the folder's lock end with the run, however it ends
        run.rewards.close()
        if run.lock is not None:
            run.lock.release()
    parallel.barrier()  # no rank leaves (and tears the group down) before rank 0 has written final/
    return run.run_dir


def training_loop(run: TrainingRun, state: dict, log) -> dict | None:
    """The steps, from the first not yet done; returns the evaluation results, or None when stopped."""
    config, parallel, task, main = run.config, run.parallel, run.task, run.parallel.is_main
    metrics_writer = MetricsWriter(run.run_dir / "metrics.jsonl") if main else Silent()
    tracker = Tracker(config, run.run_dir) if main else Silent()
    eval_examples = run.eval_examples
    progress = Progress(config.train.max_steps, config.log.quiet, config.log.every)
    if config.eval.before and eval_examples and "before" not in state["eval"]:
        state["eval"]["before"] = {"accuracy": evaluate(run, eval_examples)}
        progress.message(f"held-out accuracy before training: {state['eval']['before']['accuracy']:.3f}")
    stream = CountingStream(task.train_stream(config.seed), skip=state["examples_consumed"])
    deadline = time.monotonic() + 60 * config.train.max_minutes if config.train.max_minutes else math.inf
    with StopRequest() as stop:
        for step in range(state.get("step", 0) + 1, config.train.max_steps + 1):
            record, batch = grpo_step(run, step, stream)
            state["examples_consumed"] = stream.consumed
            check_finite(record, state, config)
            metrics_writer.write(record)
            tracker.log(record, step)
            if sample_due(step, config.log.samples_every, config.train.max_steps):
                tracker.log_samples(sample_rows(step, batch, task, config.log.samples_prompts), step)
            progress.update(record)
            if batch.reward_errors:
                progress.warning(f"step {step}: {reward_error_line(batch)}")
            state["step"] = step
            state["reference_resets"] = run.reference.resets if run.reference is not None else 0
            last = step == config.train.max_steps
            stopping = parallel.any(stop.requested)  # a signal may reach the ranks at different steps
            if stopping or (config.train.save_every and step % config.train.save_every == 0 and not last):
                save_training_checkpoint(run, step, state)
            if stopping:
                progress.close()
                tracker.close()
                log(f"stopped at step {step}; checkpoint saved. Resume with: grpolab train --resume {run.run_dir}")
                return None
            if time.monotonic() > deadline:  # the time budget ends training early; evaluation still runs
                progress.message(f"train.max_minutes={config.train.max_minutes} reached after step {step}")
                break
    progress.close()
    results = {"n": len(eval_examples), **state["eval"]}
    if config.eval.after and eval_examples:
        results["after"] = {"accuracy": evaluate(run, eval_examples)}
    if main:
        tracker.log_eval(results, config.train.max_steps)
    tracker.close()
    return results


def grpo_step(run: TrainingRun, step: int, stream):
    """One GRPO step: rollout (+ dynamic sampling), shaping, mu optimisation passes, reference resets.
    Returns (metrics record, rollout batch); with many processes both are of the whole batch, all ranks'."""
    config, policy, optimizer, parallel = run.config, run.policy, run.optimizer, run.parallel
    timer = Timer()
    with timer("generate"):
        policy.eval()
        batch, sampling_stats = sample_rollout(
            run.engine, run.tokenizer, run.task, stream, run.rewards, config, step, parallel.share, timer
        )
    timer.phases["generate"] -= timer.phases.get("rewards", 0.0)  # time/generate: the engine alone
    shaped = shape_batch(
        run.scorer, run.reference, batch, run.task, run.tokenizer, config, run.bf16, run.device, timer,
        parallel.batch_wide,
    )  # fmt: skip
    policy.train()
    skipped = 0
    for update in range(config.grpo.mu):
        with timer("policy"):
            optimizer.zero_grad(set_to_none=True)
            stats, current = optimisation_pass(run.scorer, batch, shaped, config, run.bf16, run.device, parallel)
        with timer("optimizer"):
            grad_norm = parallel.clip_grad_norm(run.scorer, config.train.max_grad_norm)
            if math.isfinite(grad_norm) and math.isfinite(stats["loss"]):  # the same on every rank
                optimizer.step()
            else:  # a non-finite update is skipped, never applied
                skipped += 1
            optimizer.zero_grad(set_to_none=True)  # gradients are not held through the next rollout
        if update == 0:
            first_stats, first_logprobs = stats, current
    run.scheduler.step()
    parallel.sync_rollout_model(run.scorer, run.rollout_model)
    run.engine.sync_weights(run.rollout_model)
    batch, first_logprobs = parallel.gather_rollout(batch, first_logprobs, run.tokenizer.pad_token_id)
    run.iterations.record(batch)
    extra = {**parallel.mean_dict({**sampling_stats, **shaped.stats}), "skipped_updates": skipped}
    ends_iteration = run.iterations.ends_iteration(step)
    if ends_iteration:  # DeepSeekMath Algorithm 1: retrain reward models, then reset the reference
        extra.update(run.iterations.end_iteration())
    reset_every = config.grpo.ref_reset_every
    if run.reference is not None and (ends_iteration or reset_every and step % reset_every == 0):
        run.reference.reset()  # pi_ref <- pi_theta (R1: every K steps)
    record = step_metrics(step, batch, first_stats, first_logprobs, grad_norm, run.scheduler, timer)
    record.update(extra)
    return record, batch


def optimisation_pass(policy, batch, shaped, config: Config, bf16: bool, device, parallel: Parallel | None = None):
    """One pass over the rollout in micro-batches, accumulating gradients of the full-batch loss (all ranks')."""
    parallel, scorer = parallel or Parallel(), as_scorer(policy)
    mask, advantages = shaped.loss_mask, shaped.advantages  # [B, T], [B, 1] or [B, T]
    old_logprobs, ref_logprobs = shaped.old_logprobs, shaped.ref_logprobs
    sequences, tokens = parallel.sum([float(mask.any(1).sum()), float(mask.sum())])  # of the whole batch
    normalisers = Normalisers(max(1, int(sequences)), tokens, config.rollout.max_new_tokens)
    totals: dict[str, float] = {"loss": 0.0}
    current = torch.zeros_like(batch.sampling_logprobs)
    train = config.train
    parts = list(micro_batches(batch, train.micro_batch_size, train.share_prompts, train.micro_batch_tokens))
    for index, part in enumerate(parts):
        rows, width = part.rows, part.width
        with parallel.accumulating(scorer, last=index == len(parts) - 1):
            logprobs, entropy = score(
                scorer, part, temperature=config.rollout.temperature, bf16=bf16, device=device, with_entropy=True,
                entropy_grad=bool(config.grpo.entropy_coef),
            )  # fmt: skip
            logprobs = logprobs.float()
            old = logprobs.detach() if old_logprobs is None else old_logprobs[rows, :width].to(device)
            ref = None if ref_logprobs is None else ref_logprobs[rows, :width].to(device)
            row_advantages = advantages[rows, : width if advantages.shape[1] > 1 else 1].to(device)
            row_mask = mask[rows, :width].to(device)
            sampling = batch.sampling_logprobs[rows, :width].to(device)
            loss, stats = grpo_loss(
                logprobs, old, ref, row_advantages, row_mask, config.grpo, normalisers, entropy.float(), sampling
            )
            # DDP and FSDP average the ranks' gradients; the loss is a sum over the whole batch's ranks
            (loss * parallel.world_size if parallel.active else loss).backward()
        share = row_mask.sum().item() / max(normalisers.num_tokens, 1.0)  # token-weighted share for logging means
        totals["loss"] += loss.item()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value * share
        current[rows, :width] = logprobs.detach().cpu()
    for parameter in scorer.parameters():  # a tied embedding's sparse rows with no dense head gradient to join
        if parameter.grad is not None and parameter.grad.is_sparse:
            parameter.grad = parameter.grad.to_dense()
    return parallel.sum_dict(totals), current


def evaluate(run: TrainingRun, examples: list[dict]) -> float:
    """Greedy held-out accuracy; with many processes each scores every world_size-th example."""
    parallel = run.parallel
    mine = examples[parallel.rank :: parallel.world_size]
    _, samples = greedy_accuracy(
        run.engine, run.tokenizer, run.task, mine, run.config.eval.max_new_tokens, run.config.eval.batch_size
    )
    correct, total = parallel.sum([sum(s["correct"] for s in samples), len(samples)])
    return correct / max(1, total)


def reward_error_line(batch) -> str:
    """What `reward.on_error=zero` scored 0, said once per step that had any (the first failure shown)."""
    first = batch.reward_error_messages[0] if batch.reward_error_messages else ""
    return f"{batch.reward_errors} reward call(s) failed and scored 0 (reward.on_error=zero); first: {first}"


def finish(run: TrainingRun, results: dict, log) -> None:
    """eval.json, final/ (refused when a weight is not finite), the summary and the report: rank 0 only."""
    if not run.parallel.is_main:
        return
    check_finite_weights(run.rollout_model)
    write_json_atomic(run.run_dir / "eval.json", results)
    adapter_applies = run.reference is None or run.reference.resets == 0
    save_policy(run.rollout_model, run.tokenizer, run.run_dir, adapter_applies, save_model_atomic, log)
    log(summary_line(results, run.run_dir))
    if run.config.log.report:
        write_run_report(run.run_dir, log)


def write_run_report(run_dir: Path, log) -> None:
    """report.md and plots at the end of a run. The model and metrics are saved by now, so a failing report
    must not turn a finished run into a failed one: it is reported in one line with the command to retry."""
    from grpolab.report.writer import write_report

    try:
        log(f"report: {write_report([run_dir])}")
    except Exception as error:  # any plotting failure: the run itself is complete
        log(f"report: not written ({type(error).__name__}: {error}); retry with `grpolab report {run_dir}`")
