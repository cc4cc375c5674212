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
`iterative.py`, the split over many processes (torchrun, DDP / FSDP2) in `distributed.py`. Compute runs in
bf16 autocast where the hardware supports it, with fp32 master weights and optimizer state.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from grpolab import batch_shaping, distributed
from grpolab.algorithms.logprobs import as_scorer
from grpolab.algorithms.objective import Normalisers, grpo_loss
from grpolab.attention import use_cpu_attention
from grpolab.batch_shaping import autocast_context
from grpolab.checkpoint import load_checkpoint, save_checkpoint, truncate_metrics
from grpolab.config import Config, ConfigError
from grpolab.distributed import Parallel, Silent, silenced
from grpolab.engine import make_engine
from grpolab.evaluation import greedy_accuracy
from grpolab.hardware import device, use_bf16
from grpolab.iterative import IterativeRL
from grpolab.lora import Reference, apply_lora, save_policy
from grpolab.models import load_model, load_tokenizer, resolve_model_path, sparse_embedding_gradients
from grpolab.progress import Progress
from grpolab.rewards.runner import RewardRunner, resolve_weights
from grpolab.rollout import PromptFit, micro_batches
from grpolab.runs import (
    MetricsWriter,
    RunLock,
    StopRequest,
    check_finite,
    check_finite_weights,
    open_run_dir,
    save_model_atomic,
    write_json_atomic,
)
from grpolab.sharded_checkpoint import is_sharded, load_sharded_checkpoint, save_sharded_checkpoint
from grpolab.step_metrics import Timer, step_metrics, summary_line
from grpolab.tasks import Task, TaskError, get_task
from grpolab.tracking import Tracker, check_backends, sample_due, sample_rows


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


def optimisation_pass(policy, batch, shaped, config: Config, bf16: bool, on, parallel: Parallel | None = None):
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
    for index, (rows, (p_ids, p_mask, c_ids, c_mask, prompt_index)) in enumerate(parts):
        width, prompt_index = c_ids.shape[1], None if prompt_index is None else prompt_index.to(on)
        with parallel.accumulating(scorer, last=index == len(parts) - 1):
            with autocast_context(bf16, on):
                logprobs, entropy = scorer(
                    p_ids.to(on), p_mask.to(on), c_ids.to(on), c_mask.to(on), config.rollout.temperature, True,
                    bool(config.grpo.entropy_coef), prompt_index,
                )  # fmt: skip
            logprobs = logprobs.float()
            old = logprobs.detach() if old_logprobs is None else old_logprobs[rows, :width].to(on)
            ref = None if ref_logprobs is None else ref_logprobs[rows, :width].to(on)
            row_advantages = advantages[rows, : width if advantages.shape[1] > 1 else 1].to(on)
            row_mask = mask[rows, :width].to(on)
            sampling = batch.sampling_logprobs[rows, :width].to(on)
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


def load_policy(config: Config, on, log):
    model_path = resolve_model_path(config.model, log=log)
    tokenizer = load_tokenizer(model_path)
    policy = load_model(model_path).to(on)
    if config.train.attention == "auto":
        use_cpu_attention(policy)  # matmul attention on CPU for short rows (grpolab/attention.py)
    if config.lora.rank:
        lora = config.lora
        policy = apply_lora(policy, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
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


@dataclass
class TrainingRun:
    """Everything one GRPO run holds, built once by `setup` and passed to each step."""

    config: Config
    run_dir: Path
    task: Task
    rewards: RewardRunner
    tokenizer: object
    policy: torch.nn.Module  # the causal LM (its weights sharded in place under FSDP)
    scorer: torch.nn.Module  # what the loss calls for log-probs: the policy in a CompletionScorer (in DDP / FSDP)
    rollout_model: torch.nn.Module  # full weights for the engine and final/: the policy, or its copy under FSDP
    reference: Reference | None  # None when beta = 0: no reference model at all
    iterations: IterativeRL
    engine: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    bf16: bool
    device: torch.device
    parallel: Parallel
    lock: RunLock | None  # rank 0's lock on the run folder


def setup(config: Config, log, parallel: Parallel) -> tuple[TrainingRun, Path | None]:
    # Everything that can be refused is checked before the run folder is touched.
    task = get_task(config.task, config.reward, config.template)
    check_task(task, config)
    weights = resolve_weights(task, config.reward.weights)
    check_backends(config.log)
    task.eval_examples(config.eval.n)  # data that cannot load, or too few held-out rows, fail here
    locks: list[RunLock] = []  # the lock stays with rank 0; only the folder and checkpoint are broadcast
    run_dir, checkpoint = parallel.on_main(lambda: open_locked(config, locks))  # rank 0 writes the run folder
    lock = locks[0] if locks else None
    reward = config.reward
    rewards = RewardRunner(
        task.reward_functions(), weights, reward.on_error, reward.timeout_seconds, reward.num_workers
    )
    torch.manual_seed(config.seed)
    on = parallel.device if parallel.active else device()
    policy, tokenizer = parallel.local_main_first(lambda: load_policy(config, on, log))
    drop_overlong_rows(task, tokenizer, policy, config, log)
    bf16 = use_bf16(config.train.precision, on)
    if not parallel.active:
        sparse_embedding_gradients(policy)  # a tied embedding's gradient: its used rows only (grpolab/models.py)
    scorer, rollout_model, reference = parallel.wrap(policy, config.grpo.beta > 0, bf16)
    optimizer = torch.optim.AdamW(
        [p for p in scorer.parameters() if p.requires_grad],
        lr=config.train.learning_rate,
        betas=(config.train.adam_beta1, config.train.adam_beta2),
        weight_decay=config.train.weight_decay,
        fused=True,  # one kernel over all parameters (CPU and CUDA), no per-tensor Python loop or temporaries
    )
    run = TrainingRun(
        config=config,
        run_dir=run_dir,
        task=task,
        rewards=rewards,
        tokenizer=tokenizer,
        policy=policy,
        scorer=scorer,
        rollout_model=rollout_model,
        reference=reference,
        iterations=IterativeRL(task, config.grpo.iteration_steps, config.grpo.replay_fraction, config.seed),
        engine=make_engine(config.rollout.engine, rollout_model, tokenizer, config.rollout.dtype),
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config),
        bf16=bf16,
        device=on,
        parallel=parallel,
        lock=lock,
    )
    return run, checkpoint


def open_locked(config: Config, locks: list) -> tuple[Path, Path | None]:
    run_dir, checkpoint, lock = open_run_dir(config)
    locks.append(lock)
    return run_dir, checkpoint


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


def evaluate(run: TrainingRun, examples: list[dict]) -> float:
    """Greedy held-out accuracy; with many processes each scores every world_size-th example."""
    parallel = run.parallel
    mine = examples[parallel.rank :: parallel.world_size]
    _, samples = greedy_accuracy(
        run.engine, run.tokenizer, run.task, mine, run.config.eval.max_new_tokens, run.config.eval.batch_size
    )
    correct, total = parallel.sum([sum(s["correct"] for s in samples), len(samples)])
    return correct / max(1, total)


class CountingStream:
    """The task's training stream, counting what was drawn so that a resumed run continues where it stopped."""

    def __init__(self, stream, skip: int):
        self.stream, self.consumed = stream, 0
        for _ in range(skip):
            next(self)

    def __next__(self):
        self.consumed += 1
        return next(self.stream)


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
    eval_examples = task.eval_examples(config.eval.n)
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


def grpo_step(run: TrainingRun, step: int, stream):
    """One GRPO step: rollout (+ dynamic sampling), shaping, mu optimisation passes, reference resets.
    Returns (metrics record, rollout batch); with many processes both are of the whole batch, all ranks'."""
    config, policy, optimizer, parallel = run.config, run.policy, run.optimizer, run.parallel
    timer = Timer()
    with timer("generate"):
        policy.eval()
        batch, sampling_stats = batch_shaping.sample_rollout(
            run.engine, run.tokenizer, run.task, stream, run.rewards, config, step, parallel.share, timer
        )
    timer.phases["generate"] -= timer.phases.get("rewards", 0.0)  # time/generate: the engine alone
    shaped = batch_shaping.shape_batch(
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
        save_checkpoint(run.run_dir, step, run.policy, run.optimizer, run.scheduler, state, keep, extra)
    run.parallel.barrier()


def write_run_report(run_dir: Path, log) -> None:
    """report.md and plots at the end of a run. The model and metrics are saved by now, so a failing report
    must not turn a finished run into a failed one: it is reported in one line with the command to retry."""
    from grpolab.report import write_report

    try:
        log(f"report: {write_report([run_dir])}")
    except Exception as error:  # any plotting failure: the run itself is complete
        log(f"report: not written ({type(error).__name__}: {error}); retry with `grpolab report {run_dir}`")
