"""Micro-batches: the rollout's rows grouped by completion length (each group padded only to its own
longest row), by a number of rows or a padded-token budget, with each distinct prompt once per group when
prompts are shared. Both the scoring passes and the policy passes take their rows from here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpolab.model.precision import autocast_context
from grpolab.rollout.batch import RolloutBatch


@dataclass
class MicroBatch:
    """Some rows of a rollout, trimmed to the columns they use."""

    rows: torch.Tensor  # [b] indices of these rows in the rollout batch
    prompt_ids: torch.Tensor  # [n, P] left-padded; n = b, or the distinct prompts when prompts are shared
    prompt_mask: torch.Tensor  # [n, P]
    completion_ids: torch.Tensor  # [b, T] right-padded to the longest completion here
    completion_mask: torch.Tensor  # [b, T]
    prompt_index: torch.Tensor | None  # [b] each row's prompt among prompt_ids; None when not shared

    @property
    def width(self) -> int:
        return self.completion_ids.shape[1]


def score(scorer, part: MicroBatch, *, temperature: float, bf16: bool, device, with_entropy=False, entropy_grad=False):
    """Log-probs [b, T] (and entropies) of a micro-batch's completion tokens under `scorer`, on `device`, in bf16
    autocast where asked: the one way both the no-gradient scoring passes and the policy passes call the model."""
    index = None if part.prompt_index is None else part.prompt_index.to(device)
    with autocast_context(bf16, device):
        return scorer(
            prompt_ids=part.prompt_ids.to(device),
            prompt_mask=part.prompt_mask.to(device),
            completion_ids=part.completion_ids.to(device),
            completion_mask=part.completion_mask.to(device),
            temperature=temperature,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
            prompt_index=index,
        )


def micro_batches(batch: RolloutBatch, size: int, share_prompts: bool = False, max_tokens: int = 0):
    """Groups of `size` rows, as `MicroBatch`es. With `max_tokens` > 0 a group instead takes as many rows as
    fit in that many padded tokens (prompt and completion columns; at least one row): short completions make
    few, large micro-batches, long ones many small ones.

    Rows are grouped by completion length (length-bucketed: a group is padded only to its own longest row,
    not to the batch's), and the padding columns that no row of a group uses are trimmed away. The loss
    is a sum over rows with whole-batch normalisers, so the grouping does not change it.

    `share_prompts`: the rows of one prompt stay together (prompts ordered by their longest completion, rows
    by length within a prompt), each micro-batch carries its distinct prompts once ([n, P]) and the prompt
    index [b] of every row, for `completion_logprobs(prompt_index=...)`."""
    lengths = batch.completion_mask.sum(1)  # [B]
    if share_prompts:
        prompt_of_row = torch.arange(len(lengths)) // batch.group_size  # [B]
        longest = lengths.view(-1, batch.group_size).max(1).values[prompt_of_row]  # [B]
        width, prompts = batch.completion_mask.shape[1] + 1, len(lengths) // batch.group_size + 1
        order = torch.argsort((longest * prompts + prompt_of_row) * width + lengths, stable=True)
    else:
        order = torch.argsort(lengths, stable=True)  # [B]
    for rows in split_rows(order, lengths, batch, size, share_prompts, max_tokens):
        prompt_rows, prompt_index = rows, None
        if share_prompts:
            prompts, prompt_index = torch.unique(rows // batch.group_size, return_inverse=True)
            prompt_rows = prompts * batch.group_size  # the first row of each prompt holds its ids
        prompt_mask = batch.prompt_mask[prompt_rows]
        first = int((prompt_mask.sum(0) > 0).nonzero().min())  # first column any row uses
        completion_mask = batch.completion_mask[rows]
        last = max(1, int(completion_mask.sum(1).max()))
        yield MicroBatch(
            rows=rows,
            prompt_ids=batch.prompt_ids[prompt_rows, first:],
            prompt_mask=prompt_mask[:, first:],
            completion_ids=batch.completion_ids[rows, :last],
            completion_mask=completion_mask[:, :last],
            prompt_index=prompt_index,
        )


def split_rows(order, lengths, batch: RolloutBatch, size: int, share_prompts: bool, max_tokens: int):
    """Consecutive pieces of `order`: `size` rows each, or (with `max_tokens`) as many as fit the budget."""
    if max_tokens <= 0:
        return [order[start : start + size] for start in range(0, len(order), size)]
    prompt_width = int(batch.prompt_mask.sum(1).max())
    pieces, current, prompts, longest = [], [], set(), 0
    for row in order.tolist():
        prompt = row // batch.group_size
        new_prompts = len(prompts | {prompt}) if share_prompts else len(current) + 1
        new_longest = max(longest, int(lengths[row]))
        if current and new_prompts * prompt_width + (len(current) + 1) * new_longest > max_tokens:
            pieces.append(torch.tensor(current))
            current, prompts, new_longest = [], set(), int(lengths[row])
        current.append(row)
        prompts.add(prompt)
        longest = new_longest
    return pieces + [torch.tensor(current)] if current else pieces
