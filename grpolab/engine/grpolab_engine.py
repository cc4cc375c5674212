"""The `grpolab` rollout engine: generation built for GRPO's shape of work, N prompts x G samples.

What it does that `generate` (the `hf` backend) does not:
- each prompt is prefilled once and its KV cache copied to its n samples (`generate` with
  num_return_sequences prefills every copy);
- the KV cache is preallocated for the whole call and finished rows leave the batch (compaction,
  done once a quarter of the rows have finished, so that the copy is paid rarely);
- bf16 weights where the hardware runs bf16 natively (`rollout.dtype=auto`), kept as a packed copy
  refreshed by `sync_weights`, while the trainer keeps fp32 master weights;
- `rollout.dtype=int8`: int8 weights with dynamic int8 activations in every projection and the head
  (`int8.py`), float32 elsewhere; Llama-family models only;
- Llama-family models run through a lean decode path (`decoder.py`); any other causal LM through
  its own transformers forward (`hf_runner.py`).
Sampling (`sampling.py`) and stopping follow `generate`: EOS from the tokenizer and generation config
plus `stop_token_ids`, stop strings, `max_new_tokens`; seeded with a private torch.Generator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from grpolab.engine import decoder, int8
from grpolab.engine.base import Completion, SamplingParams
from grpolab.engine.hf import left_pad, stop_ids
from grpolab.engine.hf_runner import HFRunner
from grpolab.engine.sampling import sample_tokens
from grpolab.errors import ConfigError
from grpolab.model.precision import use_bf16

COMPACT_FRACTION = 4  # compact once 1/4 of the rows in the batch have finished


class GrpolabEngine:
    def __init__(self, model, tokenizer, dtype: str = "auto", packed: bool = True):
        self.tokenizer = tokenizer
        self.model = model
        self.device = next(model.parameters()).device
        self.int8 = dtype == "int8"
        self.dtype = torch.bfloat16 if not self.int8 and use_bf16(dtype, self.device) else torch.float32
        self.use_packed = packed
        self.packed = None  # built on first use
        self.generic = None

    def sync_weights(self, model) -> None:
        """Refresh the engine's copies from `model` (the trainer's fp32 master weights)."""
        self.model = model
        if self.packed is not None:
            self.packed.load_weights(model)
        if self.generic is not None:
            if self.generic.model is not model and self.dtype == torch.float32:
                self.generic = HFRunner(model)
            else:
                self.generic.load_weights(model)

    def runner(self, total_length: int, ids: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """The packed decoder where it runs this model, else the transformers forward. With int8 weights the
        first call's prompts (`ids`, `mask`) calibrate the smoothing (`int8.activation_maxima`)."""
        if self.use_packed and decoder.supports(self.model, total_length):
            if self.packed is None:
                maxima = int8.activation_maxima(self.model, ids, mask) if self.int8 else None
                self.packed = decoder.PackedDecoder(self.model, self.dtype, int8_maxima=maxima)
            return self.packed
        if self.int8:
            raise ConfigError(
                "rollout.dtype=int8: needs the engine's packed path (a Llama / Qwen2 / Mistral model without LoRA, "
                f"rollout.share_weights=false); this run has model_type {self.model.config.model_type!r}"
            )
        if self.generic is None:
            same_dtype = self.dtype == next(self.model.parameters()).dtype
            copy_model = self.model if same_dtype else copy.deepcopy(self.model).to(self.dtype)
            self.generic = HFRunner(copy_model)
        return self.generic

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], n: int, params: SamplingParams, on_token: Callable | None = None
    ) -> list[list[Completion]]:
        """`on_token(ids)`, when given, receives the tokens drawn at each step, one per row still sampling
        (`grpolab chat` streams its single reply through it)."""
        if not prompts or n < 1:
            return [[] for _ in prompts]
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        stops = torch.tensor(sorted(stop_ids(self.tokenizer, self.model, params)), device=self.device)
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        runner = self.runner(ids.shape[1] + params.max_new_tokens, ids, mask)
        tokens, logprobs, ends = self.decode_loop(runner, ids, mask, n, params, stops, generator, on_token)
        return self.completions(tokens, logprobs, ends, n)

    def decode_loop(self, runner, ids, mask, n, params, stops, generator, on_token=None):
        """Sample until every row stops; returns tokens [R, T], log-probs [R, T], and per row the
        number of tokens kept with its finish reason."""
        rows = ids.shape[0] * n
        steps = params.max_new_tokens
        tokens = torch.full((rows, steps), self.tokenizer.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(rows, steps)
        ends: list[tuple[int, str] | None] = [None] * rows
        if steps == 0:
            return tokens, logprobs, [(0, "length")] * rows
        logits = runner.prefill(ids, mask, n, steps).repeat_interleave(n, dim=0)  # [R, V]
        batch_rows = torch.arange(rows)  # which output row each batch row is
        alive = torch.ones(rows, dtype=torch.bool)
        try:
            for step in range(steps):
                live = alive.nonzero().squeeze(1)
                chosen, chosen_logprobs = sample_tokens(
                    logits if live.numel() == logits.shape[0] else logits[live],
                    params.temperature, params.top_k, params.top_p, generator,
                )  # fmt: skip
                targets = batch_rows[live]
                tokens[targets, step] = chosen.cpu()
                logprobs[targets, step] = chosen_logprobs.float().cpu()
                if on_token is not None:
                    on_token(chosen.tolist())
                stopped = torch.isin(chosen, stops).cpu()
                if params.stop_strings:
                    stopped |= self.hits_stop_string(tokens, targets, step, params.stop_strings)
                for target in targets[stopped].tolist():
                    ends[target] = (step + 1, "stop")
                alive[live[stopped]] = False
                if step == steps - 1 or not alive.any():
                    break
                feed = torch.zeros(alive.shape[0], dtype=torch.long, device=self.device)
                feed[live] = chosen
                if (~alive).sum() * COMPACT_FRACTION >= alive.shape[0]:
                    keep = alive.nonzero().squeeze(1)
                    runner.keep(keep.to(self.device))
                    feed, batch_rows, alive = feed[keep], batch_rows[keep], alive[keep]
                logits = runner.decode(feed)
        finally:
            runner.release()
        ends = [end if end is not None else (steps, "length") for end in ends]
        return tokens, logprobs, ends

    def hits_stop_string(self, tokens, targets, step, stop_strings) -> torch.Tensor:
        """Does the text of a row's recent tokens contain a stop string? A stop string of c characters
        lies within the last c tokens (every token decodes to at least one character)."""
        window = max(len(s) for s in stop_strings)
        start = max(0, step + 1 - window)
        texts = self.tokenizer.batch_decode(tokens[targets, start : step + 1].tolist())
        return torch.tensor([any(s in text for s in stop_strings) for text in texts], dtype=torch.bool)

    def completions(self, tokens, logprobs, ends, n) -> list[list[Completion]]:
        results: list[list[Completion]] = [[] for _ in range(len(ends) // n)]
        for row, (length, reason) in enumerate(ends):
            ids = tokens[row, :length].tolist()
            results[row // n].append(
                Completion(
                    token_ids=ids,
                    logprobs=logprobs[row, :length].tolist(),
                    finish_reason=reason,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                )
            )
        return results
