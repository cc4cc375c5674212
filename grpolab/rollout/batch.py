"""From examples to a scored rollout batch: prompt -> G completions each -> rewards -> padded tensors.

The batch is laid out as B = N * G rows (the G completions of a prompt are adjacent), each row a
left-padded prompt followed by a right-padded completion, which is what `completion_logprobs` expects.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch

from grpolab.engine.base import Completion, SamplingParams
from grpolab.engine.hf import left_pad
from grpolab.errors import ConfigError
from grpolab.rewards.runner import RewardRunner


def encode_prompt(tokenizer, task, example: dict) -> list[int]:
    """Chat-template the task's messages; a tokenizer without a chat template gets a plain
    `Question: ...\\nAnswer:` rendering (documented fallback). A task's raw `prompt_text` wins over both."""
    text = task.prompt_text(example)
    if text is not None:
        return tokenizer(text, add_special_tokens=True)["input_ids"]
    messages = task.messages(example)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    text = "".join(f"{m['content']}\n" for m in messages if m["role"] == "system")
    text += f"Question: {messages[-1]['content']}\nAnswer:"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


@dataclass
class RolloutBatch:
    examples: list[dict]  # N
    completions: list[Completion]  # B = N * G, grouped
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, T] right-padded
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens (stop token included)
    sampling_logprobs: torch.Tensor  # [B, T] log-probs under the sampling distribution
    rewards: torch.Tensor  # [N, G] total reward
    reward_parts: dict[str, list[float | None]] = field(default_factory=dict)  # per function, B values
    correct: list[bool] = field(default_factory=list)  # B
    reward_errors: int = 0  # reward calls that failed and scored 0 (reward.on_error=zero)
    reward_error_messages: list[str] = field(default_factory=list)  # one line each, at most a few

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]


def right_pad(rows: list[list], pad, dtype) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


class PromptFit:
    """Does a row's prompt leave room for `max_new_tokens` in the model's context? Decided without tokenizing
    where the prompt's UTF-8 length settles it: a prompt cannot have more tokens than its template's own plus
    one per byte, nor fewer than its bytes over the longest token's (byte-level vocabularies spell a token
    with one symbol per byte). So a 50 MB question is refused by its length, never handed to the tokenizer;
    only rows in between are tokenized."""

    def __init__(self, tokenizer, task, context: int, max_new_tokens: int):
        self.tokenizer, self.task = tokenizer, task
        self.limit = context - max_new_tokens  # the most prompt tokens there is room for

    # Measured on the first row checked, not when built: a task that generates its rows never checks one.
    @functools.cached_property
    def overhead(self) -> int:
        """Tokens of the prompt template around an empty question (plus a margin for merges at its edges)."""
        blank = {name: "" for name in getattr(self.task, "fields", ())}
        return len(encode_prompt(self.tokenizer, self.task, {**blank, "question": ""})) + 8

    @functools.cached_property
    def longest_token(self) -> int:
        return max((len(token) for token in self.tokenizer.get_vocab()), default=1) + 1

    def text_bytes(self, example: dict) -> int:
        text = self.task.prompt_text(example)
        if text is None:
            text = "".join(str(m.get("content", "")) for m in self.task.messages(example))
        return len(text.encode("utf-8", errors="replace"))

    def __call__(self, example: dict) -> bool:
        size = self.text_bytes(example)
        if size + self.overhead <= self.limit:
            return True
        if size > self.limit * self.longest_token:
            return False
        return len(encode_prompt(self.tokenizer, self.task, example)) <= self.limit


def check_context(model, prompts: list[list[int]], max_new_tokens: int, key: str) -> None:
    """A prompt plus its new tokens must fit the model's context: say so in one line instead of failing deep
    inside attention (or silently degrading past the trained positions)."""

    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max((len(p) for p in prompts), default=0)
    if context and longest + max_new_tokens > context:
        raise ConfigError(
            f"{key}: a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's context of "
            f"{context} tokens; shorten the prompts or lower {key}"
        )


def collect_rollout(
    engine, tokenizer, task, examples: list[dict], group_size: int, params: SamplingParams, rewards, timer=None
):
    """Generate G completions per example, score them with the task's rewards, and build the batch.
    `rewards` is a RewardRunner, or a map of weights scored in this process; `timer` (step_metrics.Timer)
    gets the scoring seconds as its `rewards` phase."""
    prompts = [encode_prompt(tokenizer, task, example) for example in examples]
    check_context(getattr(engine, "model", None), prompts, params.max_new_tokens, "rollout.max_new_tokens")
    groups = engine.generate(prompts, group_size, params)
    completions = [c for group in groups for c in group]
    texts = [c.text for c in completions]
    repeated = [example for example in examples for _ in range(group_size)]
    if not isinstance(rewards, RewardRunner):
        rewards = RewardRunner(task.reward_functions(), rewards, num_workers=0)
    # the length rewards read the token counts from the row
    rows = [
        {**e, "completion_tokens": len(c.token_ids), "max_new_tokens": params.max_new_tokens}
        for e, c in zip(repeated, completions)
    ]
    with timer("rewards") if timer is not None else contextlib.nullcontext():
        scores = rewards.score(texts, rows)
    prompt_ids, prompt_mask = left_pad([p for p in prompts for _ in range(group_size)], tokenizer.pad_token_id)
    return RolloutBatch(
        examples=examples,
        completions=completions,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=right_pad([c.token_ids for c in completions], tokenizer.pad_token_id, torch.long),
        completion_mask=right_pad([[1] * len(c.token_ids) for c in completions], 0, torch.long),
        sampling_logprobs=right_pad([c.logprobs for c in completions], 0.0, torch.float32),
        rewards=torch.tensor(scores.totals, dtype=torch.float32).view(len(examples), group_size),
        reward_parts=scores.parts,
        reward_errors=scores.errors,
        reward_error_messages=scores.error_messages[:3],
        correct=[task.is_correct(text, example) for text, example in zip(texts, repeated)],
    )
