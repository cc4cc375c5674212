"""The configuration's schema: one dataclass per concern, each field's comment its `--help` line, and the range of
every number (`RANGES`). Checks across keys: `grpolab/config/checks.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grpolab import plugins
from grpolab.config.checks import check_ranges, validate_grpo
from grpolab.config.places import run_place


@dataclass
class RunConfig:
    """The keys of every command that writes a run folder; each root config below builds on it."""

    output_dir: str = ""  # the run folder (empty: runs/<name>)
    name: str = "run-{time}"  # the folder under runs/ when output_dir is empty ({task}, {time} filled in)
    overwrite: bool = False  # replace an existing run folder of this name
    seed: int = 0  # seeds sampling, data order and any freshly built weights

    def run_dir(self) -> Path:
        """The run folder: output_dir as given, else runs/<name> with its {task} and {time} filled in. The first
        call records the folder in output_dir (and the name it took), so later calls name the same folder and
        config.yaml says where the run went."""
        self.name, self.output_dir = run_place(self)
        return Path(self.output_dir)

    def validate(self) -> None:
        """Checks across keys, run when the config is built; a root config adds its own."""


@dataclass
class GenerationRunConfig(RunConfig):
    """A command that generates with an engine (eval, sample, distill, pipeline)."""

    engine: Literal["grpolab", "hf"] = "grpolab"  # grpolab: the rollout engine; hf: transformers' generate
    # the engine's compute dtype (auto: bf16 where the CPU has it; int8: 8-bit weights, Llama family only)
    dtype: Literal["auto", "bf16", "fp32", "int8"] = "auto"


@dataclass
class RolloutConfig:
    engine: Literal["grpolab", "hf"] = "grpolab"
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # the engine's weights: auto (bf16 where the CPU has it, else fp32), bf16, fp32, or int8 (8-bit weights with
    # dynamic 8-bit activations, grpolab/engine/int8.py; the trainer's log-probs stay exact)
    dtype: Literal["auto", "bf16", "fp32", "int8"] = "auto"
    # prompts per engine call (0: all of this process's prompts at once); each call is seeded by the global index
    # of its first prompt, so a run split over processes samples what one process with this setting samples
    generation_batch: int = 0
    # true: the engine generates from the trainer's own weights through the transformers forward (no second copy;
    # needs rollout.dtype=fp32, the trainer's dtype); false: its own packed copy (faster decoding)
    share_weights: bool = False
    # > 0: this many processes run the engine and the rewards apart from the trainer (grpolab/rollout/workers.py);
    # a step trains on a rollout sampled by weights at most max_staleness optimizer steps old (0: today's loop)
    workers: int = 0
    max_staleness: int = 0
    worker_threads: int = 1  # torch threads of each rollout worker


@dataclass
class TrainConfig:
    max_steps: int = 100
    learning_rate: float = 2e-5
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    # adamw: fp32 moments (torch's fused AdamW); adamw_8bit: block-wise 8-bit moments, ~2 bytes a parameter
    # instead of 8 (grpolab/training/optimizers.py)
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    # each parameter updated as soon as its gradient is ready, then the gradient freed: needs the whole rollout
    # in one micro-batch and train.max_grad_norm=0
    optimizer_in_backward: bool = False
    activation_checkpointing: bool = False  # keep each decoder layer's input only; recompute the rest in backward
    activation_offload: bool = False  # with activation_checkpointing on a GPU: those inputs in host memory
    # > 0: before the first step, `grpolab plan`'s worst-case step; the run is refused if its peak would exceed this
    memory_limit_gb: float = 0.0
    micro_batch_size: int = 16
    micro_batch_tokens: int = 0  # > 0: micro-batches by padded-token budget instead of micro_batch_size rows
    # rows per no-gradient scoring pass (reference / old-policy log-probs): these keep no activations for a
    # backward pass, so they can be larger than micro_batch_size (one 32-row pass measured ~15% faster than 4 x 8)
    scoring_batch_size: int = 64
    # auto: on CPU, attention of short rows as fp32 matmuls + softmax instead of the SDPA kernel (grpolab/attention.py)
    attention: Literal["auto", "sdpa"] = "auto"
    share_prompts: bool = True  # one prompt pass per micro-batch, its keys / values shared by its completions
    # the frozen reference's forward: transformers (a frozen copy of the model) or packed (the engine's packed
    # decoder in the trainer's dtype, no autograd: grpolab/engine/scoring.py; Llama family, no LoRA, no FSDP, no
    # reference resets). Not the default: on an AVX2-only CPU in fp32 it measured 1.04x (speed.md)
    reference_forward: Literal["transformers", "packed"] = "transformers"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    save_every: int = 25
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 3
    max_minutes: float = 11.0  # a time budget for the training steps (0: none); evaluation runs after it
    threads: int = 0  # torch threads of the trainer (0: torch's default, one per core)


@dataclass
class GRPOConfig:
    """Every variant is its own field; ALGORITHMS.md gives the formula each one selects."""

    beta: float = 0.04
    kl_in_reward: bool = False  # PPO style: r_i - beta * sum_t KL_t instead of + beta * KL in the loss
    mu: int = 1
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    advantage: Literal["group", "batch", "none", "rloo", "process"] = "group"
    ratio_level: Literal["token", "sequence"] = "token"
    aggregation: Literal["sequence", "token", "constant"] = "sequence"
    entropy_coef: float = 0.0
    ref_reset_every: int = 0
    # The engine samples with its own kernels (bf16, KV cache), so its pi_old differs from the trainer's by rounding
    # (measured on SmolLM2 bf16: mean |delta log p| 0.035 per token). Truncated importance weights correct for it:
    # (choice: beyond ALGORITHMS.md; TIS, Yao et al. 2025) none | token | sequence, capped at rollout_cap; the masked
    # variants drop tokens / sequences whose weight leaves [1/rollout_cap, rollout_cap] instead (MIS)
    rollout_correction: Literal["none", "token", "sequence", "token_mask", "sequence_mask"] = "token"
    rollout_cap: float = 2.0
    # DAPO batch shaping (ALGORITHMS.md section 3)
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 4  # generation rounds per step before training on a part-full batch
    overlong_filter: bool = False
    # Iterative RL (DeepSeekMath Algorithm 1): every `iteration_steps` steps reset pi_ref and retrain reward models
    iteration_steps: int = 0
    replay_fraction: float = 0.1


@dataclass
class PPOConfig:
    """PPO with a value model (algorithm=ppo, ALGORITHMS.md section 7): GRPO's clip (grpo.eps_low / eps_high),
    beta and KL estimator are shared; the KL is always in the reward, as k1 per token."""

    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    value_model: str = ""  # a model whose decoder starts the value model (empty: a copy of the policy's)
    value_learning_rate: float = 5e-5  # the value model's own learning rate (same schedule as the policy's)
    value_clip: float = 0.2  # eps_v: the value loss clips V to V_old +- value_clip
    epochs: int = 1  # optimisation passes over each rollout with fixed old policy and old values (GRPO's mu)
    whiten_advantages: bool = True  # normalise the advantages over the batch's tokens


@dataclass
class LoraConfig:
    """LoRA through peft; rank 0 trains every weight."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = "all-linear"  # comma-separated module names, or peft's "all-linear"


@dataclass
class RewardConfig:
    """Weights of the reward functions by name (an empty map uses the task's defaults), your own reward
    functions, how they run (grpolab/rewards/runner.py) and the options of the optional rewards
    (grpolab/rewards/optional.py)."""

    weights: dict[str, float] = field(default_factory=dict)
    # your own reward functions, FILE.py:NAME or MODULE:NAME (grpolab/plugins.py), each f(completion, example)
    # -> float | None, weight 1 unless reward.weights.NAME says otherwise, logged as rewards/NAME
    functions: list[str] = field(default_factory=list)
    on_error: Literal["raise", "zero"] = "raise"
    timeout_seconds: float = 30.0
    num_workers: int = 2
    language: str = "en"
    overlong_buffer: float = 0.2
    code_partial: bool = False
    model: str = ""


@dataclass
class EvalConfig:
    n: int = 64
    before: bool = True
    after: bool = True
    max_new_tokens: int = 32
    batch_size: int = 64
    every: int = 0  # held-out greedy accuracy every N steps too (eval/accuracy in metrics.jsonl); 0: before / after


@dataclass
class LogConfig:
    """Where a run's progress goes (see grpolab/progress.py and grpolab/tracking.py)."""

    quiet: bool = False
    every: int = 1
    samples_every: int = 10  # sample table every N steps (and at the first and last); 0 turns it off
    samples_prompts: int = 2  # the first prompts of the step whose G completions go into the table
    tensorboard: bool = True
    wandb: bool = False  # needs `pip install wandb`
    trackio: bool = False  # needs `pip install trackio`
    project: str = "grpolab"  # the wandb / trackio project
    report: bool = True  # write report.md and plots into the run folder at the end


@dataclass
class ParallelConfig:
    """Many processes (grpolab/parallel/distributed.py): launched by torchrun or `grpolab train --nproc N`."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 `fully_shard`, weights/grads/optimizer state sharded
    cpu_offload: bool = False  # fsdp on GPUs: keep the sharded weights and optimizer state in CPU memory


@dataclass
class Config(RunConfig):
    """`grpolab train`: GRPO and its variants."""

    name: str = "grpo-{task}-{time}"
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    template: Literal["default", "r1_zero"] = "default"  # r1_zero: the R1-Zero prompt and <think>/<answer> rewards
    # grpo: group-normalised advantages; online_rft: gradient coefficient 1[correct]; ppo: a value model and GAE;
    # on_policy_distill: the per-token advantage -(log p_policy - log p_teacher), the teacher in the reference's place
    algorithm: Literal["grpo", "online_rft", "ppo", "on_policy_distill"] = "grpo"
    teacher: str = ""  # algorithm=on_policy_distill: a model with the policy's tokenizer
    resume: bool = False
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        """The ranges, then the checks across keys. What needs the world size or the task is checked where those
        are known: `parallel.distributed.check_world` and `training.setup.check_task`."""
        check_ranges(self, RANGES)
        validate_grpo(self)
        # the user's code by absolute path: config.yaml then finds it from any folder (grpolab/plugins.py)
        self.reward.functions = [plugins.absolute(spec) for spec in self.reward.functions]
        self.task = plugins.absolute(self.task)


# Range checks: key -> (predicate, what is allowed). Cross-field checks live in `validate`.
RANGES: dict[str, tuple[Any, str]] = {
    "rollout.prompts_per_step": (lambda v: v >= 1, "an integer >= 1"),
    "rollout.group_size": (lambda v: v >= 1, "an integer >= 1 (>= 2 for GRPO, which normalises within a group)"),
    "rollout.max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "rollout.temperature": (lambda v: v >= 0, "a float >= 0"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "rollout.top_k": (lambda v: v >= 0, "an integer >= 0 (0 disables top-k)"),
    "rollout.generation_batch": (lambda v: v >= 0, "an integer >= 0 (0: all prompts in one engine call)"),
    "train.max_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.learning_rate": (lambda v: v >= 0, "a float >= 0"),
    "train.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.weight_decay": (lambda v: v >= 0, "a float >= 0"),
    "train.max_grad_norm": (lambda v: v >= 0, "a float >= 0 (0: no clipping)"),
    "train.memory_limit_gb": (lambda v: v >= 0, "a float >= 0 (0: no memory check before the run)"),
    "train.micro_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.micro_batch_tokens": (lambda v: v >= 0, "an integer >= 0 (0: micro_batch_size rows)"),
    "train.scoring_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.save_every": (lambda v: v >= 0, "an integer >= 0 (0 saves no checkpoints)"),
    "train.keep_checkpoints": (lambda v: v >= 1, "an integer >= 1"),
    "train.max_minutes": (lambda v: v >= 0, "a float >= 0 (0: no time budget)"),
    "train.max_nonfinite_steps": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.beta": (lambda v: v >= 0, "a float >= 0"),
    "ppo.gamma": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "ppo.lam": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "ppo.value_learning_rate": (lambda v: v >= 0, "a float >= 0"),
    "ppo.value_clip": (lambda v: v > 0, "a float > 0"),
    "ppo.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.mu": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.eps_low": (lambda v: v >= 0, "a float >= 0 (>= 1 disables the lower clip, as R1 stage 1 with eps 10)"),
    "grpo.eps_high": (lambda v: v >= 0, "a float >= 0"),
    "grpo.ref_reset_every": (lambda v: v >= 0, "an integer >= 0 (0 never resets)"),
    "grpo.rollout_cap": (lambda v: v >= 1, "a float >= 1 (the largest importance weight of a sample)"),
    "rollout.workers": (lambda v: v >= 0, "an integer >= 0 (0: the trainer samples its own rollouts)"),
    "rollout.max_staleness": (lambda v: v >= 0, "an integer >= 0 (optimizer steps)"),
    "rollout.worker_threads": (lambda v: v >= 1, "an integer >= 1"),
    "train.threads": (lambda v: v >= 0, "an integer >= 0 (0: torch's default)"),
    "reward.timeout_seconds": (lambda v: v > 0, "a float > 0"),
    "reward.num_workers": (lambda v: v >= 0, "an integer >= 0 (0 scores in the trainer's process)"),
    "reward.overlong_buffer": (lambda v: 0 < v <= 1, "a float in (0, 1] (a fraction of max_new_tokens)"),
    "grpo.dynamic_sampling_max_rounds": (lambda v: v >= 1, "an integer >= 1"),
    "grpo.iteration_steps": (lambda v: v >= 0, "an integer >= 0 (0: one iteration, no reward-model retraining)"),
    "grpo.replay_fraction": (lambda v: 0 <= v <= 1, "a float in [0, 1]"),
    "lora.rank": (lambda v: v >= 0, "an integer >= 0 (0 disables LoRA)"),
    "lora.alpha": (lambda v: v > 0, "a float > 0"),
    "lora.dropout": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "eval.n": (lambda v: v >= 0, "an integer >= 0"),
    "eval.max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.every": (lambda v: v >= 0, "an integer >= 0 (0: only before and after training)"),
    "log.every": (lambda v: v >= 1, "an integer >= 1"),
    "log.samples_every": (lambda v: v >= 0, "an integer >= 0 (0 turns the sample table off)"),
    "log.samples_prompts": (lambda v: v >= 1, "an integer >= 1"),
}
