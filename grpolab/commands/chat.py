"""`grpolab chat MODEL [key=value ...]` (or `model=MODEL`), e.g. `prompt="What is 2 + 3?"`: talk to a trained model,
to see what training made of it.

MODEL_DIR is a model folder, a run folder (its `final/` model is used) or any model name `train` accepts
(`smollm2-135m`, `tiny-random`, a hub id). Prompts go through the tokenizer's chat template, and generation
through the same engine interface that training samples with. A model is best asked the way it was trained:
for a run folder the system prompt of the run's task is used (from its config.yaml), `task=` picks one for
any model, and `system=` overrides both (`system=none`: no system message). Decoding is greedy by default, so
that the same question always gets the same answer; `temperature=` > 0 samples instead. Like every command it
takes its keys as `key=value` (`--prompt X` is refused with that hint).

Replies are printed as their tokens come (`TextPrinter`): with `engine=hf` through `generate`'s streamer
argument, with `engine=grpolab` through the engine's `on_token` callback (`stream_grpolab`). Either way the reply
is the one `engine.generate` gives for the same seed.

Interactive mode keeps the conversation; `/reset` forgets it, `/exit` or Ctrl-D leaves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grpolab.commands.common import add_stage_parser
from grpolab.config import check_ranges, load_config
from grpolab.errors import ConfigError, UserError


@dataclass
class ChatConfig:
    model: str = ""  # a model folder, a run folder (its final/ model) or a model name (smollm2-135m, a hub id)
    prompt: str = ""  # answer this one prompt and exit (empty: an interactive conversation)
    system: str = ""  # a system message before the conversation (empty: the task's; none: no system message)
    task: str = ""  # whose system prompt to use (empty: a run folder's task)
    engine: Literal["grpolab", "hf"] = "grpolab"  # the generation engine
    max_new_tokens: int = 256  # tokens per reply
    temperature: float = 0.0  # 0 is greedy; > 0 samples
    top_p: float = 1.0  # nucleus sampling mass
    seed: int = 0  # sampling seed (turn t uses seed + t)

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (grpolab chat MODEL [key=value ...], e.g. grpolab chat runs/my-run)")
        check_ranges(
            self,
            {
                "max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
                "temperature": (lambda v: v >= 0, "a float >= 0"),
                "top_p": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
            },
        )


def register(subparsers) -> None:
    add_stage_parser(
        subparsers,
        "chat",
        ChatConfig,
        "chat with a trained model (or answer one prompt=...)",
        "Chat with a model folder, a run folder (its final/ model) or a model name.",
        metavar="[MODEL] [key=value ...]",
    ).set_defaults(func=run)


def chat_config(items: list[str]) -> ChatConfig:
    """The first argument is the model when it is not a key=value pair."""
    if items and "=" not in items[0]:
        items = [f"model={items[0]}", *items[1:]]
    return load_config(None, items, root=ChatConfig)


def model_location(name: str) -> str:
    """A run folder stands for its final model; anything else is resolved like the `model` config key."""
    from grpolab.model.loading import resolve_model_path

    folder = Path(name).expanduser()
    if (folder / "final" / "config.json").is_file():
        return str(folder / "final")
    if folder.is_dir() and (folder / "metrics.jsonl").is_file():
        raise UserError(f"{name!r} is a run folder without a final/ model (the run did not finish)")
    return resolve_model_path(name)


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """The chat template's rendering; a tokenizer without one gets `Role: text` lines and `Assistant:`."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def system_prompt(args) -> str | None:
    """system=, else the system prompt of task=, else that of the run folder's task, else none."""
    import yaml

    from grpolab.tasks import get_task

    if args.system:
        return None if args.system == "none" else args.system
    task = args.task
    run_config = Path(args.model).expanduser() / "config.yaml"
    if not task and (run_config.parent / "final").is_dir() and run_config.is_file():
        task = (yaml.safe_load(run_config.read_text()) or {}).get("task")
    return get_task(task).system_prompt if task else None


def load_engine(args):
    from grpolab.engine import make_engine
    from grpolab.model.loading import load_model, load_tokenizer
    from grpolab.model.precision import default_device

    path = model_location(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path).to(default_device()).eval()
    try:
        engine = make_engine(args.engine, model, tokenizer)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("grpolab."):
            raise
        raise UserError(f"engine={args.engine}: not available in this installation") from None
    return engine, tokenizer


class TextPrinter:
    """Hands a reply to `write` as its tokens come: the text decoded so far less what is written already, held
    back while it ends in an unfinished character (a byte-level token split) or in whitespace (the reply is
    stripped). Also a `generate` streamer: `put` (the prompt first, then each new token) and `end`."""

    def __init__(self, tokenizer, write):
        self.tokenizer, self.write = tokenizer, write
        self.ids: list[int] = []
        self.written = ""
        self.prompt_seen = False

    def add(self, token_ids: list[int]) -> None:
        self.ids += token_ids
        self.show(self.tokenizer.decode(self.ids, skip_special_tokens=True).strip())

    def show(self, text: str) -> None:
        if not text.endswith("\ufffd") and text.startswith(self.written) and len(text) > len(self.written):
            self.write(text[len(self.written) :])
            self.written = text

    def put(self, value) -> None:
        if self.prompt_seen:
            self.add(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        pass


class StreamingModel:
    """The model with `generate` given a streamer, so that `HFEngine.generate` builds every other argument
    (stop tokens, seeding, greedy or sampled) as it does for training."""

    def __init__(self, model, streamer):
        self.model, self.streamer = model, streamer

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        return self.model.generate(**kwargs, streamer=self.streamer)


def stream_grpolab(engine, prompt: list[int], params, printer: TextPrinter) -> str:
    """`GrpolabEngine.generate` for one prompt and one sample, each token handed to `printer` as it is drawn
    (the same call, so the same tokens). Returns the reply's text."""
    return engine.generate([prompt], 1, params, on_token=printer.add)[0][0].text


def reply(engine, tokenizer, messages: list[dict], args, turn: int, write=lambda text: None) -> str:
    """The model's reply, stripped, handed to `write` piece by piece as it is generated."""
    from grpolab.engine import SamplingParams
    from grpolab.engine.grpolab_engine import GrpolabEngine
    from grpolab.engine.hf import HFEngine

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed + turn,
    )
    prompt = encode_chat(tokenizer, messages)
    printer = TextPrinter(tokenizer, write)
    if isinstance(engine, GrpolabEngine):
        text = stream_grpolab(engine, prompt, params, printer)
    elif isinstance(engine, HFEngine):
        streaming = HFEngine(StreamingModel(engine.model, printer), engine.tokenizer)
        text = streaming.generate([prompt], 1, params)[0][0].text
    else:  # an engine that returns whole completions only: the reply comes in one piece
        text = engine.generate([prompt], 1, params)[0][0].text
    printer.show(text.strip())  # what the last tokens held back (trailing text after a split character)
    return text.strip()


def print_piece(text: str) -> None:
    print(text, end="", flush=True)


def run(arguments) -> int:
    args = chat_config(arguments.args)
    engine, tokenizer = load_engine(args)
    system = system_prompt(args)
    start = [{"role": "system", "content": system}] if system else []
    if args.prompt:
        answer = reply(engine, tokenizer, [*start, {"role": "user", "content": args.prompt}], args, 0, print_piece)
        print()
        if not answer:
            print("(empty reply: the model ended its turn at once)", file=sys.stderr)
        return 0
    messages = list(start)
    print("Type a message; /reset forgets the conversation, /exit or Ctrl-D leaves.", file=sys.stderr)
    turn = 0
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = list(start)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        answer = reply(engine, tokenizer, messages, args, turn, print_piece)
        messages.append({"role": "assistant", "content": answer})
        print("" if answer else "(empty reply: the model ended its turn at once)", flush=True)
        turn += 1
