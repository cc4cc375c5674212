"""A learned reward: any Hugging Face sequence-classification model with one label scores prompt +
completion (R1's second RL stage mixes such a model with the rule rewards).

This is the one reward that needs torch, so it is imported lazily and runs in the trainer's process in
batches (`batched = True` tells the reward runner to call `batch`), never in the worker processes.
The pair is rendered with the model's chat template when it has one (user = prompt, assistant =
completion), else as `prompt\\n\\ncompletion`.
"""

from __future__ import annotations

from collections.abc import Callable


class RewardModelScorer:
    batched = True

    def __init__(self, model: str, prompt_of: Callable[[dict], str], batch_size: int = 8, max_length: int = 2048):
        self.model_name = model
        self.prompt_of = prompt_of
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = self._tokenizer = None

    def load(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            model = AutoModelForSequenceClassification.from_pretrained(self.model_name).eval()
            if model.config.num_labels != 1:
                raise ValueError(
                    f"reward model {self.model_name!r} has {model.config.num_labels} labels; a reward model has one"
                )
            tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
            self._model, self._tokenizer = model, tokenizer
        return self._model, self._tokenizer

    def render(self, prompt: str, completion: str) -> str:
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n\n{completion}"

    def batch(self, completions: list[str], examples: list[dict]) -> list[float]:
        import torch

        model, tokenizer = self.load()
        texts = [self.render(self.prompt_of(e), c) for c, e in zip(completions, examples)]
        scores: list[float] = []
        tokenizer.padding_side = "right"
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            with torch.no_grad():
                logits = model(**encoded).logits  # [b, 1]
            scores.extend(float(v) for v in logits[:, 0])
        return scores

    def __call__(self, completion: str, example: dict) -> float:
        return self.batch([completion], [example])[0]
