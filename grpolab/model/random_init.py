"""Build a randomly initialised model from a Hugging Face config file and save it as a normal model folder.

This runs as a child process (`python -m grpolab.model.random_init CONFIG TOKENIZER TARGET`, started by
`grpolab.model.loading.ensure_random`), never inside a training process: grpolab keeps freed memory in its own
heap (`grpolab.model.memory`), so the gigabytes of a real architecture built there would stay in that process's
resident set and inflate the peak memory that such a model is meant to measure.

A refusal (a vocabulary smaller than the tokenizer's) is printed as one line on stderr with exit status 2; the
parent reports the last stderr line of any failure as a `ModelError`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grpolab.errors import ModelError


def build_random_model(config_file: str, tokenizer_path: str, target: str) -> None:
    """Save fp32 random weights for the architecture in `config_file` (seed 0), with the tokenizer at
    `tokenizer_path` and a generation config, into the existing folder `target`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.for_model(**json.loads(Path(config_file).read_text()))
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if vocab_size is None or vocab_size < len(tokenizer):
        raise ModelError(
            f"model: random config {config_file!r} has vocab_size {vocab_size}, smaller than the {len(tokenizer)} "
            f"tokens of the tokenizer {tokenizer_path!r} (token ids would be out of range)"
        )
    # The config's own special ids belong to its own tokenizer; the model speaks the one saved beside it.
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    # `dtype` (not 4.x's older `torch_dtype`): every transformers in pyproject's range (>=4.56) takes it
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(target, safe_serialization=True)
    model.generation_config.save_pretrained(target)  # also where save_pretrained thinks the model cannot generate
    tokenizer.save_pretrained(target)


def child_main(argv: list[str], usage: str, build) -> int:
    """A model-building child's entry point (this module's, `grpolab.model.prune`'s): `build(*argv)` with the
    usage's number of arguments; a ModelError is one stderr line (the parent reports it) and exit status 2."""
    if len(argv) != len(usage.split()) - 3:  # "python -m MODULE ARG ..."
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    try:
        build(*argv)
    except ModelError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    usage = "python -m grpolab.model.random_init CONFIG TOKENIZER TARGET"
    sys.exit(child_main(sys.argv[1:], usage, build_random_model))
