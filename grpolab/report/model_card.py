"""The model card: `final/README.md` of a `grpolab train` run, so that the folder can go to the Hugging Face hub
as it is (`grpolab push`). Like the report it is made from the run folder's files alone (config.yaml, eval.json,
metrics.jsonl), so a card can be written again for any finished run.

The card says what a reader of the hub page needs to judge the model: the base model, the task, the GRPO knobs
that change what is learnt, the steps done, the held-out accuracy before and after, and how to make it again.
The hub shows final/ without the run folder, so the run's config.yaml, the exact record of every setting, is
copied into the card; the command line is shown too when the run was started by `grpolab train`.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import sys
from importlib import metadata
from pathlib import Path

import yaml

from grpolab.report.writer import fenced, fmt, read_jsonl, read_optional, table
from grpolab.runs.folder import write_text_atomic

# Model names grpolab knows that stand for a hub model. smollm2-135m is de-quantised from the Q4_1 GGUF of
# this model (grpolab/model/loading.py); tiny-random is built in code and has no hub page.
KNOWN_BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as `resolve_model_path` passes it on


def base_model_id(name: str | None) -> str | None:
    """The hub id of the base model, or None for a local folder, tiny-random or an unknown name. A name shaped
    like `owner/name` is a hub id unless it is a folder here (loading checks a folder first, the same way)."""
    if not name:
        return None
    if name in KNOWN_BASE_MODELS:
        return KNOWN_BASE_MODELS[name]
    if HUB_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def train_command(argv: list[str]) -> str | None:
    """`grpolab train ...` when this process is that command (the `grpolab` script or `python -m grpolab`)."""
    if len(argv) < 2 or argv[1] != "train":
        return None
    program = Path(argv[0])
    if program.name != "grpolab" and program.parts[-2:] != ("grpolab", "__main__.py"):
        return None
    return shlex.join(["grpolab", *argv[1:]])


def grpolab_version() -> str:
    try:
        return metadata.version("grpolab")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def finished_on(run_dir: Path) -> str:
    """The day training finished: when eval.json was written (just before final/), else the last metrics line."""
    for name in ("eval.json", "metrics.jsonl", "final"):
        path = run_dir / name
        if path.exists():
            stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.timezone.utc)
            return stamp.date().isoformat()
    return "unknown"


def front_matter(config: dict) -> str:
    """The hub's card metadata (YAML between `---` lines)."""
    data: dict = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    base = base_model_id(config.get("model"))
    if base:
        data["base_model"] = base
    data["tags"] = ["grpolab", algorithm_of(config).replace("_", "-")]
    return "---\n" + yaml.safe_dump(data, sort_keys=False) + "---"


def steps_done(run_dir: Path) -> int | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    return max((record["step"] for record in read_jsonl(path) if "step" in record), default=0)


def code(value) -> str:
    return "n/a" if value is None else f"`{value}`"


def algorithm_of(config: dict) -> str:
    """grpo, online_rft or ppo: the top-level key (a run from before it existed kept it in its grpo section)."""
    return config.get("algorithm") or (config.get("grpo") or {}).get("algorithm") or "grpo"


def training_rows(config: dict, steps: int | None) -> list[tuple[str, str]]:
    """What the model was trained from and with: the knobs that change what GRPO learns."""
    rollout, train, grpo, lora = (config.get(key) or {} for key in ("rollout", "train", "grpo", "lora"))
    model = config.get("model")
    base = base_model_id(model)
    max_steps = train.get("max_steps")
    batch = f"{fmt(rollout.get('prompts_per_step'), 'd')} × {fmt(rollout.get('group_size'), 'd')}"
    rows = [
        ("base model", code(model) + (f" ([{base}](https://huggingface.co/{base}))" if base else "")),
        ("task", code(config.get("task")) + (f", template {code(config['template'])}" if "template" in config else "")),
        ("algorithm", code(algorithm_of(config))),
        ("steps done", fmt(steps, "d") + (f" of {max_steps}" if max_steps is not None else "")),
        ("prompts per step × group size", batch),
        ("learning rate", f"{fmt(train.get('learning_rate'), 'g')} ({train.get('lr_scheduler', 'n/a')} schedule)"),
        ("KL coefficient beta, estimator", f"{fmt(grpo.get('beta'), 'g')}, {code(grpo.get('kl_estimator'))}"),
        ("optimisation passes per rollout mu", fmt(grpo.get("mu"), "d")),
        ("clip range eps_low / eps_high", f"{fmt(grpo.get('eps_low'), 'g')} / {fmt(grpo.get('eps_high'), 'g')}"),
        ("advantage", code(grpo.get("advantage"))),
        ("loss aggregation", code(grpo.get("aggregation"))),
    ]
    if algorithm_of(config) == "ppo":
        ppo = config.get("ppo") or {}
        rows.append(("PPO: GAE gamma / lambda, value lr, value clip, epochs",
                     f"{fmt(ppo.get('gamma'), 'g')} / {fmt(ppo.get('lam'), 'g')}, "
                     f"{fmt(ppo.get('value_learning_rate'), 'g')}, {fmt(ppo.get('value_clip'), 'g')}, "
                     f"{fmt(ppo.get('epochs'), 'd')}"))  # fmt: skip
    if lora.get("rank"):
        rows.append(("LoRA", f"rank {lora['rank']}, alpha {fmt(lora.get('alpha'), 'g')}; merged into these weights"))
    return rows


def evaluation_lines(evaluation: dict | None) -> list[str]:
    if evaluation is None:
        return ["No held-out evaluation was recorded (the run folder has no eval.json).", ""]
    before, after = (evaluation.get(key, {}).get("accuracy") for key in ("before", "after"))
    if before is None and after is None:
        return [f"No held-out evaluation was run (eval.n={evaluation.get('n', 'n/a')}).", ""]
    header = f"greedy accuracy on {evaluation.get('n', 'n/a')} held-out examples"
    return table(["", header], [("before training", fmt(before)), ("after training", fmt(after))])


def provenance_lines(config_text: str | None, command: str | None) -> list[str]:
    lines = ["## How it was made", ""]
    if command:
        lines += ["The command that trained it:", "", fenced(command), ""]
    if config_text is None:
        return lines + ["The run folder had no config.yaml, so its settings are not recorded here.", ""]
    return lines + [
        "The run's config.yaml below is the exact record of every setting; "
        "`grpolab train config.yaml output_dir=NEW_FOLDER` trains again with it.",
        "",
        "<details><summary>config.yaml</summary>",
        "",
        fenced(config_text.rstrip("\n")),
        "",
        "</details>",
        "",
    ]


def model_card(run_dir: str | Path, command: str | None = None) -> str:
    """The README.md model card of the run in `run_dir`; `command` is the `grpolab train ...` line that made it,
    when known."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config = read_optional(config_path, yaml.safe_load) or {}
    evaluation = read_optional(run_dir / "eval.json", json.loads)
    # a stage's run (sft, distill) has no grpo section
    method = f" with {algorithm_of(config).replace('_', ' ').upper()}" if "grpo" in config else ""
    title = f"{config.get('model', 'a model')} trained{method} on {config.get('task', 'a task')}"
    lines = [front_matter(config), "", f"# {run_dir.resolve().name}", ""]
    lines += [f"{title}, with grpolab.", ""]
    lines += ["## Training", ""] + table(["", "value"], training_rows(config, steps_done(run_dir)))
    lines += ["## Held-out evaluation", ""] + evaluation_lines(evaluation)
    lines += provenance_lines(config_path.read_text() if config_path.is_file() else None, command)
    lines += [f"Card written by grpolab {grpolab_version()}; training finished on {finished_on(run_dir)}.", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, command: str | None = None) -> Path:
    """Write `final/README.md`; without `command`, this process's own command line when it is `grpolab train`."""
    run_dir = Path(run_dir)
    card = model_card(run_dir, command if command is not None else train_command(sys.argv))
    path = run_dir / "final" / "README.md"
    write_text_atomic(path, card)
    return path
