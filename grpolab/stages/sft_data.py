"""SFT data: JSONL records -> token ids with an assistant-only loss mask -> packed rows.

A record is either `{"messages": [{"role", "content"}, ...]}` or `{"prompt": ..., "completion": ...}`
(the prompt a string or a list of messages); a pair becomes the messages `prompt + [assistant: completion]`.
Each message is rendered with the tokenizer's chat template and only assistant turns are learned: the
tokens after the assistant header, up to and including the end-of-turn token and the newline the template
writes after it (those belong to the assistant turn in the rendered text; learning the end-of-turn token is
what teaches the model to stop).

Packing (choice): whole examples are laid one after another into rows of at most `max_length` tokens
(next-fit, in the shuffled order; an example longer than `max_length` is truncated). Examples in one row
never see each other: position ids restart at 0 for each example and the attention mask is block-diagonal
causal (an additive [B, 1, L, L] mask, which transformers' sdpa and eager attention both accept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from grpolab.errors import UserError


@dataclass
class Tokenised:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is an assistant token the model learns to predict


def read_records(path: str) -> list[list[dict]]:
    """The conversations of a JSONL file, each a list of messages; a bad line raises UserError naming it."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data: {path!r} does not exist")
    conversations = []
    with open(file) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"data: {path}:{number} is not valid JSON") from None
            conversations.append(to_messages(record, f"{path}:{number}"))
    if not conversations:
        raise UserError(f"data: {path!r} holds no records")
    return conversations


def to_messages(record, where: str) -> list[dict]:
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
    elif isinstance(record, dict) and "prompt" in record and "completion" in record:
        prompt = record["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages = messages + [{"role": "assistant", "content": record["completion"]}]
    else:
        raise UserError(f"data: {where} needs 'messages' or 'prompt' and 'completion'")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise UserError(f"data: {where}: messages must be a list of {{'role': str, 'content': str}}")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"data: {where} has no assistant message to learn")
    return messages


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenise(tokenizer, messages: list[dict]) -> Tokenised:
    """Token ids of the rendered conversation and its assistant-only loss mask.

    Each turn's text is the difference between the renderings of the conversation up to it and up to the
    turn before; this needs a template whose rendering of a prefix is a prefix of the whole (ChatML is).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("model: the tokenizer has no chat template, which SFT data is rendered with")
    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for turn in range(len(messages)):
        whole = render(tokenizer, messages[: turn + 1])
        if not whole.startswith(done):
            raise UserError("model: the chat template does not render conversations prefix by prefix")
        pieces = [(whole[len(done) :], 0)]
        if messages[turn]["role"] == "assistant":
            header = render(tokenizer, messages[:turn], add_generation_prompt=True)
            if not (header.startswith(done) and whole.startswith(header)):
                raise UserError("model: the chat template's assistant header is not a prefix of the turn")
            pieces = [(header[len(done) :], 0), (whole[len(header) :], 1)]
        for text, learn in pieces:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            mask += [learn] * len(piece)
        done = whole
    return Tokenised(ids, mask)


@dataclass
class PackedRow:
    input_ids: list[int]
    loss_mask: list[int]
    position_ids: list[int]  # restart at 0 for each example
    segment_ids: list[int]  # 1, 2, ... per example in the row


def pack(examples: list[Tokenised], max_length: int, packing: bool = True) -> list[PackedRow]:
    """Next-fit packing of whole examples into rows of at most `max_length` tokens (see module docstring).
    With packing off, every example is its own row."""
    rows: list[PackedRow] = []
    current = PackedRow([], [], [], [])
    for example in examples:
        ids, mask = example.input_ids[:max_length], example.loss_mask[:max_length]
        if current.input_ids and (not packing or len(current.input_ids) + len(ids) > max_length):
            rows.append(current)
            current = PackedRow([], [], [], [])
        segment = (current.segment_ids[-1] if current.segment_ids else 0) + 1
        current.input_ids += ids
        current.loss_mask += mask
        current.position_ids += list(range(len(ids)))
        current.segment_ids += [segment] * len(ids)
    if current.input_ids:
        rows.append(current)
    return rows


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Additive attention mask [B, 1, L, L]: token i sees token j iff same example and j <= i.
    Padding (segment 0) sees only itself, so no softmax row is empty."""
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [L, L]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, L, L]
    allowed = (same & causal & (segment_ids[:, None, :] > 0)) | torch.eye(length, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask[:, None]  # [B, 1, L, L]


def collate(rows: list[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch of packed rows; `labels_mask[b, t]` says whether token t+1 is learned."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        ids[b, :n] = torch.tensor(row.input_ids)
        loss_mask[b, :n] = torch.tensor(row.loss_mask)
        positions[b, :n] = torch.tensor(row.position_ids)
        segments[b, :n] = torch.tensor(row.segment_ids)
    # the target of position t is token t+1, learned when it is an assistant token of the same example
    same_example = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)  # [B, L-1]
    targets_mask = loss_mask[:, 1:].bool() & same_example  # [B, L-1]
    return {
        "input_ids": ids,
        "position_ids": positions,
        "attention_mask": block_causal_mask(segments),
        "targets_mask": targets_mask,
    }
