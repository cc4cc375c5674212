"""`grpolab sft`: supervised fine-tuning on JSONL conversations, learning only the assistant tokens.

The loop is plain torch and reads top to bottom: pack the tokenised examples into rows (`sft_data.py`),
then for each step take `batch_size` rows, accumulate the gradient of the mean per-token loss over
micro-batches exactly (each micro-batch's summed loss is divided by the step's total learned tokens),
clip, step. bf16 autocast with fp32 master weights, as in the GRPO trainer. `fit` is shared with
`distill`, which only swaps the per-token loss.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from grpolab.config import LogConfig, RunConfig, check_ranges, to_yaml
from grpolab.errors import ConfigError
from grpolab.model.hf_compat import decoder_of
from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path
from grpolab.model.precision import autocast_context, default_device, use_bf16
from grpolab.runs.folder import MetricsWriter, prepare_run_dir, save_model_atomic, write_text_atomic
from grpolab.stages.sft_data import collate, pack, read_records, tokenise


@dataclass
class SFTTrainConfig:
    epochs: int = 2
    max_steps: int = 0  # 0: as many steps as `epochs` needs
    learning_rate: float = 1e-5
    lr_scheduler: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8  # packed rows per optimizer step
    micro_batch_size: int = 4
    max_length: int = 512  # tokens per packed row
    packing: bool = True
    precision: Literal["auto", "bf16", "fp32"] = "auto"


TRAIN_RANGES = {
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.max_steps": (lambda v: v >= 0, "an integer >= 0 (0: epochs decide)"),
    "train.learning_rate": (lambda v: v >= 0, "a float >= 0"),
    "train.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.weight_decay": (lambda v: v >= 0, "a float >= 0"),
    "train.max_grad_norm": (lambda v: v > 0, "a float > 0"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.micro_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.max_length": (lambda v: v >= 2, "an integer >= 2"),
}


@dataclass
class SFTConfig(RunConfig):
    model: str = "smollm2-135m"
    data: str = ""  # JSONL: {"messages": [...]} or {"prompt": ..., "completion": ...} per line
    name: str = "sft-{time}"
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        check_ranges(self, TRAIN_RANGES)
        if not self.data:
            raise ConfigError("data: give a JSONL file of conversations (data=PATH)")
        if not self.model:
            raise ConfigError("model: must name a model (smollm2-135m, tiny-random, a folder or a hub id)")


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1 - progress
    return 1.0


def learned_hidden(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a learned token, [N, H], and those tokens, [N]; the vocabulary
    projection is left to the loss so that only learned positions pay for it."""
    hidden = decoder_of(model)(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        use_cache=False,
    ).last_hidden_state  # [B, L, H]
    mask = batch["targets_mask"].to(device)  # [B, L-1]
    return hidden[:, :-1][mask], batch["input_ids"][:, 1:].to(device)[mask]


def cross_entropy_sum(model, batch: dict, device: torch.device) -> torch.Tensor:
    """Summed negative log-likelihood of the learned tokens."""
    hidden, targets = learned_hidden(model, batch, device)
    logits = model.get_output_embeddings()(hidden).float()  # [N, V]
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


LossFn = Callable[[torch.nn.Module, dict, torch.device], torch.Tensor]


def fit(model, rows, pad_id: int, train, run_dir: Path, loss_sum: LossFn, log_config, seed: int, log=print):
    """Train `model` on packed `rows` minimising the mean per-token `loss_sum`; writes metrics.jsonl."""
    device = default_device()
    bf16 = use_bf16(train.precision, device)
    steps_per_epoch = math.ceil(len(rows) / train.batch_size)
    total = train.max_steps or steps_per_epoch * train.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, train.warmup_steps, total, train.lr_scheduler)
    )
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    for step in range(1, total + 1):
        start = time.perf_counter()
        if len(order) < train.batch_size:  # next epoch: a fresh shuffle, appended
            order += rng.sample(range(len(rows)), len(rows))
        chosen = [rows[i] for i in order[: train.batch_size]]
        del order[: train.batch_size]
        micro = [
            collate(chosen[i : i + train.micro_batch_size], pad_id)
            for i in range(0, len(chosen), train.micro_batch_size)
        ]
        num_tokens = sum(int(b["targets_mask"].sum()) for b in micro)
        optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        for batch in micro:
            with autocast_context(bf16, device):
                loss = loss_sum(model, batch, device) / max(1, num_tokens)
            loss.backward()
            total_loss += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm).item()
        optimizer.step()
        scheduler.step()
        seconds = time.perf_counter() - start
        record = {
            "step": step,
            "loss": total_loss,
            "tokens": num_tokens,
            "grad_norm": grad_norm,
            "learning_rate": scheduler.get_last_lr()[0],
            "step_seconds": seconds,
            "tokens_per_second": sum(b["input_ids"].numel() for b in micro) / seconds,
        }
        writer.write(record)
        if not log_config.quiet and (step % log_config.every == 0 or step == total):
            log(f"step {step}/{total} | loss {total_loss:.4f} | {num_tokens} learned tokens | {seconds:.1f} s/step")
    model.eval()
    return total


def prepare_rows(tokenizer, conversations: list[list[dict]], train, seed: int) -> list:
    """Tokenise, shuffle (seeded) and pack conversations."""
    examples = [tokenise(tokenizer, messages) for messages in conversations]
    random.Random(seed).shuffle(examples)
    return pack(examples, train.max_length, train.packing)


def sft(config: SFTConfig, log=print) -> Path:
    """Fine-tune as configured; returns the run folder (with final/)."""
    conversations = read_records(config.data)  # bad data fails before the folder is touched
    path = resolve_model_path(config.model, log=log)
    tokenizer = load_tokenizer(path)
    rows = prepare_rows(tokenizer, conversations, config.train, config.seed)
    run_dir = prepare_run_dir(config.run_dir(), config.overwrite)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    torch.manual_seed(config.seed)
    model = load_model(path).to(default_device())
    log(f"sft: {len(rows)} packed rows of <= {config.train.max_length} tokens from {config.data}")
    steps = fit(
        model, rows, tokenizer.pad_token_id, config.train, run_dir, cross_entropy_sum, config.log, config.seed, log
    )
    save_model_atomic(model, tokenizer, run_dir / "final")
    log(f"sft: {steps} steps; model saved to {run_dir / 'final'}")
    return run_dir
