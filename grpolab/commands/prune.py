"""`grpolab prune MODEL [SPEC] [key=value ...]`: a smaller model made from MODEL (grpolab/model/prune.py), saved
as a normal Hugging Face folder that loads with `from_pretrained`.

SPEC is `keep=0,2,4`, `every_other`, `layers=N` or `half` (the default: half the layers, by measured
importance), optionally `+mlp=M`. The same model can be named anywhere a model is, as `prune:<model>:<spec>`
(built once into the cache, calibrated on the default task).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from grpolab.commands.common import add_stage_parser
from grpolab.config import load_config
from grpolab.errors import UserError


@dataclass
class PruneConfig:
    output_dir: str = ""  # the folder to write (empty: runs/pruned-<model name>-<spec>)
    overwrite: bool = False  # replace an existing model folder there
    task: str = "arithmetic"  # whose training prompts measure the importances
    calibration_prompts: int = 32


def register(subparsers) -> None:
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


def output_folder(config: PruneConfig, model: str, spec: str) -> Path:
    """Where the pruned model goes, refused in one line when something is there and may not be replaced."""
    name = f"pruned-{Path(model.rstrip('/')).name}-{spec}".replace("=", "").replace(",", "_").replace("+", "-")
    target = Path(config.output_dir or Path("runs") / name).expanduser()
    if target.exists():
        if not config.overwrite:
            raise UserError(f"output_dir: {str(target)!r} exists; pass overwrite=true to replace it")
        if not (target / "config.json").is_file():
            raise UserError(f"output_dir: {str(target)!r} is not a model folder; not replacing it")
    return target


def run(args) -> int:
    from grpolab.model.loading import build_in_child, resolve_model_path
    from grpolab.model.prune import parse_spec
    from grpolab.tasks import get_task

    config = load_config(None, args.args, root=PruneConfig)
    if config.calibration_prompts < 1:
        raise UserError("calibration_prompts: expected an integer >= 1")
    parse_spec(args.spec)
    get_task(config.task)  # an unknown task is refused before the model is loaded
    target = output_folder(config, args.model, args.spec)
    source = resolve_model_path(args.model)
    staging = target.parent / f".{target.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    build_in_child("grpolab.model.prune", [source, args.spec, "<staging>", config.task,
                   str(config.calibration_prompts)], staging, f"pruning {args.model}")  # fmt: skip
    if target.exists():  # only a model folder, with overwrite=true (output_folder)
        shutil.rmtree(target)
    staging.rename(target)

    summary = json.loads((target / "prune_origin.json").read_text())
    print(f"pruned {args.model}: kept layers {summary['kept_layers']} of {summary['of_layers']}, "
          f"{summary['parameters']:,} parameters; saved to {target}")  # fmt: skip
    return 0
