"""The run report: `report.md` plus PNG plots under `plots/`, from the files a run leaves in its folder
(metrics.jsonl, eval.json, samples.jsonl, config.yaml). Nothing here needs the model, so a report can be
written for a run that is still going or that crashed half-way.

One run: the report goes into the run folder. Several runs: their curves are overlaid and the report, with a
table of the config keys that differ between them, goes into `output` (by default a new folder
`compare-<first>-vs-<second>...` beside the first run); a run folder is never used as the output of a comparison,
so a run's own report is never replaced by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grpolab.errors import UserError
from grpolab.report import plots

BEST_WORST = 3  # completions shown in each of the best and worst lists


@dataclass
class Run:
    path: Path
    name: str
    metrics: list[dict]
    evaluation: dict | None = None  # eval.json
    samples: list[dict] = field(default_factory=list)  # samples.jsonl
    config: dict | None = None  # config.yaml


def read_jsonl(path: Path) -> list[dict]:
    """One object per line. A cut-off last line (a run killed while writing it) is dropped; a bad line
    elsewhere means the file is damaged and is reported with its line number."""
    lines = path.read_text().splitlines()
    last = max((number for number, line in enumerate(lines, start=1) if line.strip()), default=0)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == last:
                break
            raise UserError(f"{path}: line {number} is not valid JSON") from None
    return records


def read_optional(path: Path, parse):
    """A run's eval.json or config.yaml, or None when it is absent (an unfinished run has no eval.json)."""
    if not path.is_file():
        return None
    try:
        return parse(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError):
        raise UserError(f"{path}: cannot be parsed") from None


def load_run(path: str | Path) -> Run:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder (no metrics.jsonl)")
    metrics = [record for record in read_jsonl(metrics_path) if "step" in record]
    if not metrics:
        raise UserError(f"{str(metrics_path)!r} holds no training steps yet")
    evaluation = read_optional(run_dir / "eval.json", json.loads)
    config = read_optional(run_dir / "config.yaml", yaml.safe_load)
    samples = read_jsonl(run_dir / "samples.jsonl") if (run_dir / "samples.jsonl").is_file() else []
    return Run(run_dir, run_dir.resolve().name, metrics, evaluation, samples, config)


def distinct_names(runs: list[Run]) -> None:
    """Runs named alike (e.g. `a/grpo` and `b/grpo`) are told apart by their parent folder."""
    for run in runs:
        if sum(other.name == run.name for other in runs) > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"


def window_mean(values: list[float]) -> tuple[float | None, float | None]:
    """Means over the first and the last tenth of the steps (at least one step each)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    size = max(1, len(values) // 10)
    return sum(values[:size]) / size, sum(values[-size:]) / size


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_rows(run: Run) -> list[tuple[str, str]]:
    metrics = run.metrics
    rows = []
    max_steps = ((run.config or {}).get("train") or {}).get("max_steps")
    rows.append(("steps recorded", f"{len(metrics)}" + (f" of {max_steps}" if max_steps is not None else "")))
    for key, label in [("reward_mean", "reward"), ("accuracy", "training-batch accuracy")]:
        first, last = window_mean([record.get(key) for record in metrics])
        rows.append((f"{label} (first → last tenth of steps)", f"{fmt(first)} → {fmt(last)}"))
    evaluation = run.evaluation or {}
    before, after = (evaluation.get(k, {}).get("accuracy") for k in ("before", "after"))
    rows.append((f"held-out accuracy, greedy (n={evaluation.get('n', 'n/a')})", f"{fmt(before)} → {fmt(after)}"))
    rows += held_out_rows(metrics)
    rows.append(("stop reason", evaluation.get("stop_reason", "n/a") if run.evaluation else "n/a (no eval.json yet)"))
    seconds = [record.get("step_seconds") or 0.0 for record in metrics]
    rows.append(("training time (sum of steps)", f"{sum(seconds):.1f} s, {sum(seconds) / len(seconds):.2f} s per step"))
    speeds = [record["tokens_per_second"] for record in metrics if record.get("tokens_per_second") is not None]
    rows.append(("completion tokens per second (mean)", fmt(sum(speeds) / len(speeds) if speeds else None, ".0f")))
    return rows


def held_out_rows(metrics: list[dict]) -> list[tuple[str, str]]:
    """The `eval.every` evaluations during training (`eval/accuracy`): first, last and best; none without them."""
    points = plots.periodic_eval_points(metrics)
    if not points:
        return []
    best = max(points, key=lambda point: point[1])
    text = f"{fmt(points[0][1])} (step {points[0][0]}) → {fmt(points[-1][1])} (step {points[-1][0]})"
    return [("held-out accuracy during training (eval.every)", f"{text}; best {fmt(best[1])} (step {best[0]})")]


def phase_rows(run: Run) -> list[tuple[str, str, str]]:
    totals = {key: sum(record.get(key) or 0.0 for record in run.metrics) for key in plots.phases([run])}
    whole = sum(totals.values()) or 1.0
    steps = len(run.metrics)
    return [
        (key.removeprefix("time/"), f"{total / steps:.3f}", f"{total / whole:.0%}") for key, total in totals.items()
    ]


def fenced(text: str) -> str:
    """A Markdown code block whose fence is longer than any backtick run inside the text."""
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def best_and_worst(samples: list[dict], k: int = BEST_WORST) -> tuple[list[dict], list[dict]]:
    """The k highest- and k lowest-reward completions. A text repeated for the same question counts once (its
    latest step), among equal rewards the later step wins (it shows what training made of the model), and a
    completion whose reward is the lowest of all is never called best (nor the highest worst). When all rewards
    are equal both lists are empty."""
    latest: dict[tuple, dict] = {}
    for sample in samples:
        key = (sample["question"], sample["completion"])
        if key not in latest or sample["step"] >= latest[key]["step"]:
            latest[key] = sample
    unique = list(latest.values())
    if not unique:
        return [], []
    low, high = min(s["reward"] for s in unique), max(s["reward"] for s in unique)
    best = sorted((s for s in unique if s["reward"] > low), key=lambda s: (-s["reward"], -s["step"]))[:k]
    worst = sorted((s for s in unique if s["reward"] < high), key=lambda s: (s["reward"], -s["step"]))[:k]
    return best, worst


def sample_block(sample: dict) -> list[str]:
    parts = ", ".join(f"{name} {fmt(value)}" for name, value in (sample.get("rewards") or {}).items())
    return [
        f"**step {sample['step']}** · reward {sample['reward']:.3f}" + (f" ({parts})" if parts else "")
        + f" · correct: {sample.get('correct')} · {sample.get('length')} tokens, {sample.get('finish_reason')}",
        "",
        f"Question: {sample['question']}  ",
        f"Expected answer: `{sample.get('answer')}`",
        "",
        fenced(sample["completion"]),
        "",
    ]  # fmt: skip


def table(header: list[str], rows: list) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def write_plots(runs: list[Run], plot_dir: Path) -> dict[str, Path]:
    """All plots that have data, by section title, in report order."""
    made = {
        "Reward": plots.reward_plot(runs, plot_dir / "reward.png"),
        "Accuracy": plots.accuracy_plot(runs, plot_dir / "accuracy.png"),
        "Held-out evaluation before and after training": plots.eval_plot(runs, plot_dir / "eval.png"),
        "KL divergence to the reference policy": plots.kl_plot(runs, plot_dir / "kl.png"),
        "Entropy": plots.metric_plot(
            runs, "entropy", "Policy entropy over completion tokens", "entropy (nats / token)", plot_dir / "entropy.png"
        ),
        "Completion length": plots.length_plot(runs, plot_dir / "completion_length.png"),
        "Time per step by phase": plots.step_time_plot(runs, plot_dir / "step_time.png"),
    }
    return {title: path for title, path in made.items() if path is not None}


def config_line(config: dict | None) -> str:
    if not config:
        return "no config.yaml"
    rollout, train, grpo = (config.get(k) or {} for k in ("rollout", "train", "grpo"))
    return (
        f"model `{config.get('model')}` · task `{config.get('task')}` · "
        f"{rollout.get('prompts_per_step')} prompts × {rollout.get('group_size')} completions per step · "
        f"lr {train.get('learning_rate')} · beta {grpo.get('beta')} · mu {grpo.get('mu')}"
    )


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(runs: list[Run]) -> list[list]:
    """Rows `key, value in run 1, value in run 2, ...` for every config key whose value differs."""
    flats = [flatten(run.config or {}) for run in runs]
    keys = sorted({key for flat in flats for key in flat} - {"output_dir", "name", "overwrite"})
    return [
        [key, *(flat.get(key, "-") for flat in flats)] for key in keys if len({repr(f.get(key)) for f in flats}) > 1
    ]


def render(runs: list[Run], plot_files: dict[str, Path], output: Path) -> str:
    single = len(runs) == 1
    lines = [f"# Run report: {runs[0].name}" if single else f"# Comparison of {len(runs)} runs", ""]
    for run in runs:
        lines += [f"- `{run.path}`: {config_line(run.config)}"]
    lines += ["", "## Summary", ""]
    if single:
        lines += table(["", "value"], summary_rows(runs[0]))
    else:
        columns = [dict(summary_rows(run)) for run in runs]
        labels = list(dict.fromkeys(label for column in columns for label in column))  # rows some runs lack too
        lines += table(
            ["", *(run.name for run in runs)], [[label, *(c.get(label, "") for c in columns)] for label in labels]
        )
        differences = config_differences(runs)
        lines += ["## Config differences", ""]
        lines += table(["key", *(run.name for run in runs)], differences) if differences else ["(none)", ""]
    for title, path in plot_files.items():
        lines += [f"## {title}", "", f"![{title}]({path.relative_to(output).as_posix()})", ""]
        if single and title.startswith("Time per step"):
            lines += table(["phase", "mean seconds per step", "share"], phase_rows(runs[0]))
    if single:
        lines += completions_section(runs[0])
    return "\n".join(lines)


def completions_section(run: Run) -> list[str]:
    if not run.samples:
        return ["## Completions", "", "No samples.jsonl in this run (log.samples_every=0).", ""]
    best, worst = best_and_worst(run.samples)
    steps = sorted({s["step"] for s in run.samples})
    lines = ["## Completions", "", f"From the sample table (steps {', '.join(map(str, steps))}).", ""]
    if not best and not worst:
        reward = run.samples[0]["reward"]
        lines += [f"Every sampled completion has reward {reward:.3f}; the latest ones:", ""]
        for sample in sorted(run.samples, key=lambda s: -s["step"])[:BEST_WORST]:
            lines += sample_block(sample)
        return lines
    for title, chosen in [("Best", best), ("Worst", worst)]:
        lines += [f"### {title}", ""]
        for sample in chosen:
            lines += sample_block(sample)
    return lines


def default_output(runs: list[Run]) -> Path:
    if len(runs) == 1:
        return runs[0].path
    name = "compare-" + "-vs-".join(run.path.resolve().name for run in runs)
    if len(name) > 100:
        name = f"compare-{len(runs)}-runs"
    return runs[0].path.resolve().parent / name


def write_report(run_dirs: list[str | Path], output: str | Path | None = None) -> Path:
    """Write report.md and plots/*.png for one run (into the run folder) or several (overlaid, into `output`);
    returns the path of report.md."""
    if not run_dirs:
        raise UserError("report: name at least one run folder")
    runs = [load_run(path) for path in run_dirs]
    distinct_names(runs)
    out = Path(output) if output else default_output(runs)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {str(out)!r} is a file, not a folder")
    own_run = len(runs) == 1 and out.resolve() == runs[0].path.resolve()
    if (out / "metrics.jsonl").exists() and not own_run:
        raise FileExistsError(f"output {str(out)!r} is a run folder; its own report would be replaced")
    out.mkdir(parents=True, exist_ok=True)
    plot_files = write_plots(runs, out / "plots")
    report = out / "report.md"
    report.write_text(render(runs, plot_files, out))
    return report
