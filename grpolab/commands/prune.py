"""`grpolab prune MODEL [SPEC] [key=value ...]`: a smaller model made from MODEL (grpolab/model/prune.py), saved
as a normal Hugging Face folder that loads with `from_pretrained`.

SPEC is `keep=0,2,4`, `every_other`, `layers=N` or `half` (the default: half the layers, by measured
importance), optionally `+mlp=M`. The same model can be named anywhere a model is, as `prune:<model>:<spec>`
(built once into the cache, calibrated on the default task).
"""

from __future__ import annotations

from grpolab.commands.common import add_stage_parser
from grpolab.errors import ConfigError


def register(subparsers) -> None:
    from grpolab.stages.prune import PruneConfig

    add_stage_parser(
        subparsers,
        "prune",
        PruneConfig,
        "make a smaller model by dropping decoder layers (and MLP channels)",
        __doc__.split("\n\n", 1)[1],
        positionals=(
            ("model", {"metavar": "MODEL", "help": "smollm2-135m, tiny-random, a model folder or a run folder"}),
            ("spec", {"metavar": "SPEC", "nargs": "?", "default": "half", "help": "which layers to keep (half)"}),
        ),
        metavar="key=value",
    ).set_defaults(func=run)


def run(args) -> int:
    from grpolab.config import load_config, settings_overrides
    from grpolab.stages.prune import PruneConfig, prune

    for text in args.args:
        if text.split("=")[0].strip() in ("model", "spec"):
            raise ConfigError(f"{text.split('=')[0].strip()}: give it as the MODEL / SPEC argument, not as a key")
    given = settings_overrides({"model": args.model, "spec": args.spec})
    prune(load_config(None, [*args.args, *given], root=PruneConfig))
    return 0
