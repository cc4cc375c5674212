"""The TRL side of `grpolab bench step`: TRL's GRPOTrainer on the configuration grpolab's `Config` describes.

The mapping (grpolab -> GRPOConfig): group_size -> num_generations; prompts_per_step x group_size completions
per optimizer step -> per_device_train_batch_size = train.micro_batch_size with gradient_accumulation_steps
= B / micro_batch_size (so generation_batch_size = B and one generation per optimizer step, as in grpolab);
max_new_tokens -> max_completion_length; beta, mu -> num_iterations, eps_low/eps_high -> epsilon/epsilon_high,
learning rate, Adam betas, weight decay, gradient clipping, a constant schedule, temperature/top_p/top_k, seed;
aggregation sequence/token/constant -> loss_type grpo/dapo/dr_grpo, advantage group/batch/none ->
scale_rewards. fp32 on CPU (bf16=False; TRL loads the model in fp32), no vLLM, no logging, no saving.
Everything else keeps TRL's defaults (e.g. gradient_checkpointing=True); `--trl-option key=value` overrides.

The reward is grpolab's own reward runner for the task (the same functions and weights on both sides), and
the dataset is the same prompts in the same order (shuffle_dataset=False): step k sees the prompts grpolab's
step k sees. Step seconds are the intervals between `on_step_end` callbacks (the first from `on_train_begin`),
so a step includes its generation, reward, reference and policy passes and the optimizer.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time

from grpolab.errors import ConfigError

LOSS_TYPES = {"sequence": "grpo", "token": "dapo", "constant": "dr_grpo"}
SCALE_REWARDS = {"group": "group", "batch": "batch", "none": "none"}


def trl_arguments(config, output_dir: str, max_steps: int, options: dict) -> dict:
    """GRPOConfig keyword arguments equivalent to grpolab's `config` (see the module docstring)."""
    from grpolab.model.precision import default_device

    rollout, train, grpo = config.rollout, config.train, config.grpo
    batch = rollout.prompts_per_step * rollout.group_size
    if batch % train.micro_batch_size:
        raise ConfigError(f"bench step: train.micro_batch_size must divide {batch} completions for TRL")
    if grpo.aggregation not in LOSS_TYPES or grpo.advantage not in SCALE_REWARDS:
        raise ConfigError("bench step: TRL has no equivalent of this grpo.aggregation / grpo.advantage")
    on_cpu = default_device().type == "cpu"
    arguments = dict(
        output_dir=output_dir,
        per_device_train_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=batch // train.micro_batch_size,
        num_generations=rollout.group_size,
        max_completion_length=rollout.max_new_tokens,
        beta=grpo.beta,
        num_iterations=grpo.mu,
        epsilon=grpo.eps_low,
        epsilon_high=grpo.eps_high,
        loss_type=LOSS_TYPES[grpo.aggregation],
        scale_rewards=SCALE_REWARDS[grpo.advantage],
        learning_rate=train.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        seed=config.seed,
        max_steps=max_steps,
        shuffle_dataset=False,
        remove_unused_columns=False,
        use_vllm=False,
        use_cpu=on_cpu,
        bf16=not on_cpu,  # the issue: TRL in fp32 on CPU; on a GPU both sides use bf16
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    arguments.update(options)
    return arguments


class StepClock:
    """Seconds of each optimizer step, from TrainerCallback events."""

    def __init__(self):
        self.last, self.seconds = None, []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.last = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                clock.seconds.append(now - clock.last)
                clock.last = now
                print(
                    f"bench step: trl step {len(clock.seconds)}: {clock.seconds[-1]:.2f} s", file=sys.stderr, flush=True
                )

        return Clock()


class StepRecorder:
    """Counts the matrix products of one optimizer step (`matmul_floor.MatmulRecorder`), from TrainerCallback
    events: TRL generates inside the step, after `on_step_begin`, so generation is counted too."""

    def __init__(self):
        from grpolab.bench.matmul_floor import MatmulRecorder

        self.mode = MatmulRecorder()
        self.counts = self.mode.counts

    def callback(self, completed_steps: int):
        from transformers import TrainerCallback

        mode = self.mode

        class Record(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == completed_steps:
                    mode.__enter__()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == completed_steps + 1:
                    mode.__exit__(None, None, None)

        return Record()


def run_trl_side(
    overrides: list[str], warmup: int, steps: int, all_prompts: bool, options: dict | None = None, floor: bool = False
):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from grpolab.bench.step import bench_config, peak_rss_gb, prompt_stream
    from grpolab.model.loading import load_tokenizer, resolve_model_path
    from grpolab.rewards.runner import RewardRunner, resolve_weights
    from grpolab.tasks import get_task

    with tempfile.TemporaryDirectory() as folder:
        config = bench_config(overrides, folder)
        task = get_task(config.task, config.reward, config.template)
        scorer = RewardRunner(task.reward_functions(), resolve_weights(task, config.reward.weights), num_workers=0)
        total = warmup + steps + (1 if floor else 0)  # the floor's step comes last and is not timed
        examples = list(
            itertools.islice(prompt_stream(task, config, all_prompts), total * config.rollout.prompts_per_step)
        )
        rows = [{"prompt": task.messages(e), "example_index": i} for i, e in enumerate(examples)]
        rewards_per_call: list[float] = []

        def grpolab_reward(prompts, completions, completion_ids, example_index, **kwargs):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            scored = [
                {**examples[i], "completion_tokens": len(ids), "max_new_tokens": config.rollout.max_new_tokens}
                for i, ids in zip(example_index, completion_ids)
            ]
            totals = scorer.score(texts, scored).totals
            rewards_per_call.append(sum(totals) / len(totals))
            return totals

        model_path = str(resolve_model_path(config.model))
        clock, recorder = StepClock(), StepRecorder()
        trainer = GRPOTrainer(
            model=model_path,
            reward_funcs=[grpolab_reward],
            args=GRPOConfig(**trl_arguments(config, folder, total, options or {})),
            train_dataset=Dataset.from_list(rows),
            processing_class=load_tokenizer(resolve_model_path(config.model)),
            callbacks=[clock.callback(), *([recorder.callback(warmup + steps)] if floor else [])],
        )
        trainer.train()
        scorer.close()
    result = {
        "step_seconds": clock.seconds[warmup : warmup + steps],
        "rewards": rewards_per_call,  # one reward call per generation batch = per optimizer step here
        "phases": {},
        "peak_rss_gb": peak_rss_gb(),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
    }
    if floor:
        from grpolab.bench.matmul_floor import time_matmuls

        result["matmuls"] = time_matmuls(recorder.counts)
    return result
