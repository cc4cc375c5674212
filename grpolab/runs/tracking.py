"""Where a run's numbers and samples go besides metrics.jsonl: TensorBoard event files in the run folder
(on by default), Weights & Biases and trackio when asked for (`log.wandb=true`, `log.trackio=true`), and the
sample table `samples.jsonl`.

The trainer sees one small interface, `Tracker.log(record, step)`, `Tracker.log_samples(rows, step)` and
`Tracker.close()`. Each backend gets the same flat record (metric name -> number); names with a slash
(`rewards/correctness`, `time/generate`) become groups in the TensorBoard and W&B dashboards.
wandb and trackio are optional: `check_backends` fails before the run starts, in one line, when one is asked
for but not installed, so a long run never dies at its first log call.

The sample table holds every completion of the first `log.samples_prompts` prompts of a step, one JSON object
per completion, written at step 1, every `log.samples_every` steps and at the last step; `grpolab report` picks
its best and worst completions from it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from grpolab.config import Config, LogConfig, to_dict
from grpolab.errors import ConfigError

OPTIONAL_BACKENDS = {"wandb": "wandb", "trackio": "trackio", "tensorboard": "tensorboard"}  # field -> module


def check_backends(log: LogConfig) -> None:
    """Raise a one-line ConfigError for every backend that is asked for but cannot be imported."""
    for field, module in OPTIONAL_BACKENDS.items():
        if getattr(log, field) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"log.{field}=true but {module} is not installed (pip install {module}, or set log.{field}=false)"
            )


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of a record; None (a reward that applied to no completion) and NaN are left out."""
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def sample_due(step: int, every: int, max_steps: int) -> bool:
    return every > 0 and (step == 1 or step % every == 0 or step == max_steps)


def sample_rows(step: int, batch, task, num_prompts: int) -> list[dict]:
    """All G completions of the first `num_prompts` prompts of a rollout batch, with their rewards."""
    rows = []
    group_size = batch.group_size
    for prompt_index, example in enumerate(batch.examples[:num_prompts]):
        for k in range(group_size):
            row = prompt_index * group_size + k
            completion = batch.completions[row]
            rows.append(
                {
                    "step": step,
                    "prompt_index": prompt_index,
                    "question": task.question(example),
                    "answer": example.get("answer"),
                    "completion": completion.text,
                    "reward": float(batch.rewards[prompt_index, k]),
                    "rewards": {name: values[row] for name, values in batch.reward_parts.items()},
                    "correct": bool(batch.correct[row]),
                    "length": len(completion.token_ids),
                    "finish_reason": completion.finish_reason,
                }
            )
    return rows


def markdown_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def samples_markdown(rows: list[dict]) -> str:
    """The sample table as Markdown, which TensorBoard's text plugin renders as a table."""
    lines = ["| prompt | question | completion | reward | correct |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [row["prompt_index"], row["question"], row["completion"], f"{row['reward']:.3f}", row["correct"]]
        lines.append("| " + " | ".join(markdown_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


class TensorBoardBackend:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))  # events.out.tfevents.* beside metrics.jsonl

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    def __init__(self, config: Config, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=config.log.project, name=config.name, dir=str(run_dir), config=to_dict(config))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_table(self, tag: str, rows: list[dict], step: int) -> None:
        columns = ["prompt_index", "question", "completion", "reward", "correct"]
        table = self.wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        self.run.log({tag: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioBackend:
    def __init__(self, config: Config):
        import trackio

        self.trackio = trackio
        trackio.init(project=config.log.project, name=config.name, config=to_dict(config))

    def log(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def log_table(self, tag: str, rows: list[dict], step: int) -> None:
        columns = ["prompt_index", "question", "completion", "reward", "correct"]
        table = self.trackio.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        self.trackio.log({tag: table}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class Tracker:
    """Fans a step's record out to the configured backends and appends sample rows to samples.jsonl."""

    def __init__(self, config: Config, run_dir: Path):
        check_backends(config.log)
        self.samples_path = run_dir / "samples.jsonl"
        self.backends: list = []
        if config.log.tensorboard:
            self.backends.append(TensorBoardBackend(run_dir))
        if config.log.wandb:
            self.backends.append(WandbBackend(config, run_dir))
        if config.log.trackio:
            self.backends.append(TrackioBackend(config))

    def log(self, record: dict, step: int) -> None:
        values = scalars({key: value for key, value in record.items() if key != "step"})
        for backend in self.backends:
            backend.log(values, step)

    def log_eval(self, results: dict, last_step: int) -> None:
        """Held-out accuracy (eval.json) as `eval/accuracy_before` and `eval/accuracy_after`, both at the last
        step: wandb and trackio drop a value logged at a step earlier than one already logged."""
        values = {f"eval/accuracy_{when}": results[when]["accuracy"] for when in ("before", "after") if when in results}
        if values:
            self.log(values, last_step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        with open(self.samples_path, "a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        for backend in self.backends:
            if hasattr(backend, "log_text"):
                backend.log_text("samples", samples_markdown(rows), step)
            else:
                backend.log_table("samples", rows, step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []
