"""`grpolab bench <name> [key=value ...]`: performance measurements. Each benchmark is a module
`grpolab.bench.<name>` (or `MODULES[name]`) exposing `run(overrides: list[str]) -> int`; add its name to
BENCHMARKS. A module with options of its own also has `add_arguments(parser)` and is called as
`run(overrides, args)`."""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "generate": "tokens/s of the grpolab engine vs transformers generate (fp32)",
    "step": "one GRPO step against TRL",
    "ppo": "GRPO against PPO with a value model: memory, step time, learning (same completions per step)",
    "async": "the synchronous loop against rollout workers at max_staleness k: steps per hour, idle, accuracy",
}
MODULES = {"async": "async_rollouts"}  # `async` is a Python keyword: its module has another name


def module_name(name: str) -> str:
    return f"grpolab.bench.{MODULES.get(name, name)}"


def available() -> dict[str, str]:
    """The benchmarks whose module exists (one may be listed before it is built)."""
    found = {}
    for name, help_text in BENCHMARKS.items():
        try:
            importlib.import_module(module_name(name))
        except ModuleNotFoundError as error:
            if error.name != module_name(name):
                raise
            continue
        found[name] = help_text
    return found


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (JSON lines on stdout)", description=__doc__)
    names = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, help_text in available().items():
        sub = names.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("overrides", nargs="*", metavar="key=value")
        module = importlib.import_module(module_name(name))
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.set_defaults(func=run)


def run(args) -> int:
    module = importlib.import_module(module_name(args.benchmark))
    if hasattr(module, "add_arguments"):
        return module.run(args.overrides, args)
    return module.run(args.overrides)
