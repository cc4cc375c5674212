"""`grpolab prune` and the pipeline's `prune` stage: a smaller model made from an existing one
(grpolab/model/prune.py), saved as a normal Hugging Face folder at `output_dir`. It is built by a child process
(`loading.build_in_child`), so the source model's weights never enter this process's heap."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grpolab.errors import ConfigError, UserError


@dataclass
class PruneConfig:
    model: str = "smollm2-135m"  # the model to prune: a name, a folder or a run folder
    spec: str = "half"  # keep=0,2,4 | every_other | layers=N | half, optionally +mlp=M
    output_dir: str = ""  # the folder to write (empty: runs/pruned-<model name>-<spec>)
    overwrite: bool = False  # replace an existing model folder there
    seed: int = 0  # unused by the measurement (it is deterministic); kept as every stage has one
    task: str = ""  # whose training prompts measure the importances (empty: built-in arithmetic questions)
    calibration_prompts: int = 32

    def validate(self) -> None:
        from grpolab.model.prune import parse_spec

        if self.calibration_prompts < 1:
            raise ConfigError(f"calibration_prompts: got {self.calibration_prompts}, expected an integer >= 1")
        parse_spec(self.spec)


def output_folder(config: PruneConfig) -> Path:
    """Where the pruned model goes, refused in one line when something is there and may not be replaced."""
    name = f"pruned-{Path(config.model.rstrip('/')).name}-{config.spec}"
    name = name.replace("=", "").replace(",", "_").replace("+", "-").replace(":", "-")
    target = Path(config.output_dir or Path("runs") / name).expanduser()
    if target.exists():
        if not config.overwrite:
            raise UserError(f"output_dir: {str(target)!r} exists; pass overwrite=true to replace it")
        if not (target / "config.json").is_file():
            raise UserError(f"output_dir: {str(target)!r} is not a model folder; not replacing it")
    return target


def prune(config: PruneConfig, log=print) -> Path:
    """Prune as configured; returns the model folder (with prune_origin.json: kept layers, importances)."""
    from grpolab.model.loading import build_in_child, load_tokenizer, resolve_model_path
    from grpolab.rollout.batch import encode_prompt
    from grpolab.tasks import get_task

    task = get_task(config.task) if config.task else None  # an unknown task is refused before anything loads
    target = output_folder(config)
    source = resolve_model_path(config.model, log=log)
    staging = target.parent / f".{target.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory() as folder:
        calibration = str(config.calibration_prompts)
        if task is not None:  # the task's prompts as the rollout encodes them, for the child to measure on
            stream, tokenizer = task.train_stream(0), load_tokenizer(source)
            prompts = [encode_prompt(tokenizer, task, next(stream)) for _ in range(config.calibration_prompts)]
            calibration = str(Path(folder) / "calibration.json")
            Path(calibration).write_text(json.dumps({"task": config.task, "prompts": prompts}))
        args = [source, config.spec, "<staging>", calibration]
        build_in_child("grpolab.model.prune", args, staging, f"pruning {config.model}")
    if target.exists():  # only a model folder, with overwrite=true (output_folder)
        shutil.rmtree(target)
    staging.rename(target)
    summary = json.loads((target / "prune_origin.json").read_text())
    log(f"pruned {config.model}: kept layers {summary['kept_layers']} of {summary['of_layers']}, "
        f"{summary['parameters']:,} parameters; saved to {target}")  # fmt: skip
    return target
