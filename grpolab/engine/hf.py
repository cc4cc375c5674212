"""The `hf` backend: transformers' `generate`, kept as the reference the grpolab engine is tested against.

Like TRL without vLLM, it repeats each prompt n times (n-fold prefill); log-probs come from the
processed scores (after temperature / top-k / top-p), i.e. the distribution the token was drawn from.
"""

from __future__ import annotations

import torch

from grpolab.engine.base import Completion, SamplingParams


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P] ids and mask, padded on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def stop_ids(tokenizer, model, params: SamplingParams) -> set[int]:
    if params.ignore_eos:
        return set()
    ids = set(params.stop_token_ids)
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class HFEngine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        greedy = params.temperature == 0
        stops = stop_ids(self.tokenizer, self.model, params)
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            num_return_sequences=n,
            output_scores=True,
            return_dict_in_generate=True,
            eos_token_id=sorted(stops),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.ignore_eos:  # EOS is suppressed (not just ignored): the same length, for benchmarks
            kwargs.update(min_new_tokens=params.max_new_tokens, eos_token_id=[self.tokenizer.eos_token_id])
        if params.stop_strings:
            kwargs.update(stop_strings=params.stop_strings, tokenizer=self.tokenizer)
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[]):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        self.model.train(was_training)
        new_tokens = out.sequences[:, ids.shape[1] :]  # [B*n, T]
        logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], dim=1)  # [B*n, T, V]
        chosen = logprobs.gather(-1, new_tokens[:, : logprobs.shape[1]].unsqueeze(-1)).squeeze(-1)
        results: list[list[Completion]] = [[] for _ in prompts]
        for row in range(new_tokens.shape[0]):
            tokens = new_tokens[row].tolist()
            end = next((i + 1 for i, t in enumerate(tokens) if t in stops), None)
            reason = "stop" if end is not None else "length"
            tokens = tokens[:end] if end is not None else tokens
            if end is None and params.stop_strings:
                text = self.tokenizer.decode(tokens)
                if any(s in text for s in params.stop_strings):
                    reason = "stop"
            results[row // n].append(
                Completion(
                    token_ids=tokens,
                    logprobs=chosen[row, : len(tokens)].tolist(),
                    finish_reason=reason,
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                )
            )
        return results
