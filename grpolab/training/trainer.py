"""The GRPO training loop (DeepSeekMath section 4, ALGORITHMS.md sections 1-4), top to bottom:

    for each step:
        sample N prompts, G completions each (the rollout engine); with dynamic sampling, more rounds
        score them with the task's rule-based rewards (+ DAPO's soft overlong punishment)
        old log-probs once per rollout (only when mu > 1 or the KL is in the reward),
        reference log-probs (only when beta > 0: no reference model is loaded otherwise)
        advantages: group-normalised outcome, process (step rewards), or online RFT's 1[correct]
        mu optimisation passes over the rollout, each one optimizer step with exact gradient accumulation
        every K steps / at the end of an outer iteration: pi_ref <- pi_theta (and retrain reward models)

Read top-down: `train` -> `run_training` -> `training_loop` -> `grpo_step` -> `optimisation_pass`
(`training/optimisation.py`, shared with PPO's step in `training/ppo.py`), helpers after. The rollout comes
from `grpolab/rollout/`, the experience (log-probs, advantages, masks) from `training/experience.py`, the
set-up and checkpoints from `training/setup.py`, the split over many processes (torchrun, DDP / FSDP2) from
`grpolab/parallel/` (ARCHITECTURE.md). Compute runs in bf16 autocast where the hardware supports it, with
fp32 master weights and optimizer state.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from grpolab.config import Config
from grpolab.errors import TrainingError
from grpolab.model.lora import save_policy
from grpolab.parallel import distributed
from grpolab.parallel.distributed import Parallel, Silent, silenced
from grpolab.rollout.evaluation import greedy_accuracy, training_eval_summary
from grpolab.rollout.workers import WorkerDied
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
from grpolab.training.async_rollouts import WorkerRollouts
from grpolab.training.experience import publish_weights, shape_batch, step_rollout
from grpolab.training.metrics import Timer, step_metrics, summary_line
from grpolab.training.optimisation import apply_update, optimisation_pass
from grpolab.training.plan_check import check_memory
from grpolab.training.ppo import ppo_step
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
    check_memory(config, log, parallel.active)  # train.memory_limit_gb: the worst-case step, before anything
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run, checkpoint = setup(config, log, parallel)
    graceful = False
    try:
        state = restore(run, checkpoint, log)
        if config.rollout.workers:  # the engine and rewards in worker processes (training/async_rollouts.py)
            run.rollouts = WorkerRollouts(run, version=state.get("step", 0))
        results = training_loop(run, state, log)
        graceful = True
        if results is not None:
            finish(run, results, log)
    finally:  # the rollout and reward workers and the folder's lock end with the run, however it ends
        if run.rollouts is not None:
            run.rollouts.close(graceful)
        run.rewards.close()
        if run.lock is not None:
            run.lock.release()
    parallel.barrier()  # no rank leaves (and tears the group down) before rank 0 has written final/
    return run.run_dir


def training_loop(run: TrainingRun, state: dict, log) -> dict | None:
    """The steps, from the first not yet done; returns the evaluation results with the `stop_reason` (max_steps or
    time_budget), or None when a signal stopped the run (saved to resume; non_finite is raised as a TrainingError)."""
    config, parallel, task, main = run.config, run.parallel, run.task, run.parallel.is_main
    metrics_writer = MetricsWriter(run.run_dir / "metrics.jsonl") if main else Silent()
    tracker = Tracker(config, run.run_dir) if main else Silent()
    eval_examples = run.eval_examples
    warnings_log = run.run_dir / "warnings.log"  # library deprecations while the live panel is drawn
    progress = Progress(config.train.max_steps, config.log.quiet, config.log.every, warnings_log=warnings_log)
    if config.eval.before and eval_examples and "before" not in state["eval"]:
        state["eval"]["before"] = {"accuracy": evaluate(run, eval_examples)}
        progress.message(f"held-out accuracy before training: {state['eval']['before']['accuracy']:.3f}")
    stream = CountingStream(task.train_stream(config.seed), skip=state["examples_consumed"])
    deadline = time.monotonic() + 60 * config.train.max_minutes if config.train.max_minutes else math.inf
    progress.set_deadline(deadline)
    stop_reason, held_out = "max_steps", None  # held_out: (step, accuracy) of the latest eval.every evaluation
    with StopRequest() as stop, contextlib.closing(progress):  # closed (and warnings restored) however it ends
        for step in range(state.get("step", 0) + 1, config.train.max_steps + 1):
            try:
                record, batch = step_function(run, step, stream)
            except WorkerDied as error:  # the last finished step is saved, so the run resumes with new workers
                raise worker_died(run, step, state, error) from None
            state["examples_consumed"] = stream.consumed if run.rollouts is None else run.rollouts.consumed
            check_finite_step(record, state, config)
            if config.eval.every and eval_examples and step % config.eval.every == 0:  # every rank, as before/after
                record["eval/accuracy"] = evaluate(run, eval_examples)  # greedy: draws no training randomness
                held_out = (step, record["eval/accuracy"])
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
                resume = f"grpolab train --resume {run.run_dir}"
                log(f"stopped at step {step} (stop reason: signal); checkpoint saved. Resume with: {resume}")
                return None
            if time.monotonic() > deadline and not last:  # the time budget ends training early; evaluation runs
                progress.message(f"train.max_minutes={config.train.max_minutes} reached after step {step}")
                stop_reason = "time_budget"
                break
    results = {"n": len(eval_examples), **state["eval"], "stop_reason": stop_reason}
    if config.eval.after and eval_examples:  # the weights of the last step: its evaluation when it had one
        accuracy = held_out[1] if held_out and held_out[0] == state.get("step") else evaluate(run, eval_examples)
        results["after"] = {"accuracy": accuracy}
    if main:
        tracker.log_eval(results, config.train.max_steps)
    tracker.close()
    return results


def step_function(run: TrainingRun, step: int, stream):
    """One optimizer step of the configured algorithm: GRPO (and online RFT) here, PPO in `training/ppo.py`."""
    return (ppo_step if run.config.algorithm == "ppo" else grpo_step)(run, step, stream)


def grpo_step(run: TrainingRun, step: int, stream):
    """One GRPO step: rollout (+ dynamic sampling), shaping, mu optimisation passes, reference resets.
    Returns (metrics record, rollout batch); with many processes both are of the whole batch, all ranks'."""
    config, policy, optimizer, parallel = run.config, run.policy, run.optimizer, run.parallel
    timer = Timer()
    batch, sampling_stats = step_rollout(run, step, stream, timer)
    shaped = shape_batch(
        run.scorer, run.reference, batch, run.task, run.tokenizer, config, run.bf16, run.device, timer,
        parallel.batch_wide,
    )  # fmt: skip
    policy.train()
    skipped = 0
    for update in range(config.grpo.mu):
        with timer("policy"):
            optimizer.zero_grad(set_to_none=True)
            if run.step_in_backward is not None:
                run.step_in_backward.begin()  # each parameter's update runs as its gradient is ready
            stats, current = optimisation_pass(run.scorer, batch, shaped, config, run.bf16, run.device, parallel)
        with timer("optimizer"):
            grad_norm, applied = apply_update(run, stats["loss"])
            skipped += not applied  # a non-finite update is skipped, never applied
        if update == 0:
            first_stats, first_logprobs = stats, current
    run.scheduler.step()
    parallel.sync_rollout_model(run.scorer, run.rollout_model)
    publish_weights(run, step, timer)
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


def worker_died(run: TrainingRun, step: int, state: dict, error: WorkerDied) -> TrainingError:
    """The one line a run stopped by a dead rollout worker ends with, after saving its last finished step."""
    done = step - 1
    if done < 1:
        return TrainingError(f"{error} before step 1 finished; nothing to save")
    save_training_checkpoint(run, done, state)
    return TrainingError(f"{error} during step {step}; step {done} saved. Resume: grpolab train --resume {run.run_dir}")


def evaluate(run: TrainingRun, examples: list[dict]) -> float:
    """Greedy held-out accuracy; with many processes each scores every world_size-th example."""
    parallel = run.parallel
    if run.rollouts is not None:  # the workers sample; the trainer's engine is refreshed for evaluation only
        run.engine.sync_weights(run.rollout_model)
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


def check_finite_step(record: dict, state: dict, config: Config) -> None:
    """`check_finite`, its error line naming the stop reason as eval.json names the others."""
    try:
        check_finite(record, state, config)
    except TrainingError as error:
        raise TrainingError(f"stop reason: non_finite; {error}") from error


def finish(run: TrainingRun, results: dict, log) -> None:
    """eval.json, final/ (refused when a weight is not finite), the summary and the report: rank 0 only."""
    if not run.parallel.is_main:
        return
    check_finite_weights(run.rollout_model)
    write_json_atomic(run.run_dir / "eval.json", training_eval_summary(run.config.task, results))
    adapter_applies = run.reference is None or run.reference.resets == 0
    save_policy(run.rollout_model, run.tokenizer, run.run_dir, adapter_applies, save_model_atomic, log)
    from grpolab.report.model_card import write_model_card  # imported as the report is: only when a run ends

    write_model_card(run.run_dir)
    log(f"stop reason: {results['stop_reason']}; {summary_line(results, run.run_dir)}")
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
