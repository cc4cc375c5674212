"""`grpolab chat MODEL_DIR [--prompt TEXT]`: talk to a trained model, to see what training made of it.

MODEL_DIR is a model folder, a run folder (its `final/` model is used) or any model name `train` accepts
(`smollm2-135m`, `tiny-random`, a hub id). Prompts go through the tokenizer's chat template, and generation
through the same engine interface that training samples with. A model is best asked the way it was trained:
for a run folder the system prompt of the run's task is used (from its config.yaml), `--task` picks one for
any model, and `--system` overrides both. Decoding is greedy by default, so that the
same question always gets the same answer; `--temperature` samples instead.

Interactive mode keeps the conversation; `/reset` forgets it, `/exit` or Ctrl-D leaves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpolab.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a trained model (or answer one --prompt)",
        description="Chat with a model folder, a run folder (its final/ model) or a model name.",
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="model folder, run folder, or model name")
    parser.add_argument("--prompt", help="answer this one prompt and exit")
    parser.add_argument("--system", help="a system message placed before the conversation")
    parser.add_argument("--task", help="use this task's system prompt (default: the run's task for a run folder)")
    parser.add_argument(
        "--engine", choices=["hf", "grpolab"], default="grpolab", help="generation engine (default: grpolab)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.set_defaults(func=run)


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
    """--system, else the system prompt of --task, else that of the run folder's task, else none."""
    import yaml

    from grpolab.tasks import get_task

    if args.system is not None:
        return args.system or None
    task = args.task
    run_config = Path(args.model).expanduser() / "config.yaml"
    if task is None and (run_config.parent / "final").is_dir() and run_config.is_file():
        task = (yaml.safe_load(run_config.read_text()) or {}).get("task")
    return get_task(task).system_prompt if task else None


def check_args(args) -> None:
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: got {args.max_new_tokens}, expected an integer >= 1")
    if args.temperature < 0:
        raise UserError(f"--temperature: got {args.temperature}, expected a float >= 0")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: got {args.top_p}, expected a float in (0, 1]")


def load_engine(args):
    from grpolab.engine import make_engine
    from grpolab.model.loading import load_model, load_tokenizer
    from grpolab.model.precision import device

    path = model_location(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path).to(device()).eval()
    try:
        engine = make_engine(args.engine, model, tokenizer)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("grpolab."):
            raise
        raise UserError(f"--engine {args.engine}: not available in this installation") from None
    return engine, tokenizer


def reply(engine, tokenizer, messages: list[dict], args, turn: int) -> str:
    from grpolab.engine import SamplingParams

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed + turn,
    )
    return engine.generate([encode_chat(tokenizer, messages)], 1, params)[0][0].text.strip()


def run(args) -> int:
    check_args(args)
    engine, tokenizer = load_engine(args)
    system = system_prompt(args)
    start = [{"role": "system", "content": system}] if system else []
    if args.prompt is not None:
        answer = reply(engine, tokenizer, [*start, {"role": "user", "content": args.prompt}], args, 0)
        print(answer)
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
        answer = reply(engine, tokenizer, messages, args, turn)
        messages.append({"role": "assistant", "content": answer})
        print(f"model> {answer or '(empty reply: the model ended its turn at once)'}", flush=True)
        turn += 1
