"""The PNG plots of `grpolab report`, one function per plot, each taking one run or several to overlay.

Matplotlib is used through `matplotlib.figure.Figure` only (no pyplot), which renders with Agg and leaves the
global backend of the caller (a notebook, a GUI) alone. RL curves are noisy: when a run has at least
`SMOOTH_MIN_STEPS` steps the raw series is drawn faint and a trailing moving average over 1/20 of the steps on top.
Every plot has a title, axis labels and, where there is more than one line, a legend.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SMOOTH_MIN_STEPS = 20
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` finite values (NaN entries are skipped, not counted)."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric; a missing or None value becomes NaN (a gap in the line)."""
    steps = [record["step"] for record in metrics]
    values = [math.nan if record.get(key) is None else float(record[key]) for record in metrics]
    return steps, values


def has_values(metrics: list[dict], key: str) -> bool:
    return any(record.get(key) is not None for record in metrics)


def new_axes(title: str, ylabel: str, xlabel: str = "training step"):
    figure = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    axes = figure.subplots()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.ticklabel_format(axis="y", useOffset=False)  # "+4.61" offsets above the axis are easy to miss
    return figure, axes


def smoothing_window(runs) -> int:
    """One window for every line of a plot: 1/20 of the longest run, or 1 (no smoothing) for short runs."""
    longest = max(len(run.metrics) for run in runs)
    return max(2, longest // 20) if longest >= SMOOTH_MIN_STEPS else 1


def draw_curve(axes, steps, values, label: str, colour: str, window: int, linestyle: str = "-") -> None:
    """With window > 1: the raw series faint and its trailing moving average bold (the x label says so);
    otherwise the raw series with a marker on every step."""
    if window > 1:
        axes.plot(steps, values, color=colour, alpha=0.25, linewidth=1, linestyle=linestyle)
        axes.plot(steps, moving_average(values, window), color=colour, linewidth=2, linestyle=linestyle, label=label)
        axes.set_xlabel(f"training step (faint: per step; bold: trailing mean of {window} steps)")
    else:
        axes.plot(steps, values, color=colour, linewidth=2, linestyle=linestyle, marker="o", markersize=4, label=label)


def save(figure, axes, path: Path) -> Path:
    if axes.get_legend() is None and len(axes.get_legend_handles_labels()[0]) > 1:
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def metric_plot(runs, key: str, title: str, ylabel: str, path: Path) -> Path | None:
    """One metric over steps, one line per run; None when no run recorded it."""
    if not any(has_values(run.metrics, key) for run in runs):
        return None
    figure, axes = new_axes(title, ylabel)
    window = smoothing_window(runs)
    for index, run in enumerate(runs):
        steps, values = series(run.metrics, key)
        draw_curve(axes, steps, values, run.name, COLOURS[index % len(COLOURS)], window)
    return save(figure, axes, path)


def reward_plot(runs, path: Path) -> Path:
    """The total reward; with one run also its spread within the batch and each reward function."""
    figure, axes = new_axes("Reward per step (training batch)", "reward")
    window = smoothing_window(runs)
    if len(runs) == 1:
        metrics = runs[0].metrics
        steps, mean = series(metrics, "reward_mean")
        _, spread = series(metrics, "reward_std")
        draw_curve(axes, steps, mean, "total reward (mean)", COLOURS[0], window)
        axes.fill_between(
            steps, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)],
            color=COLOURS[0], alpha=0.12, label="± std over the batch",
        )  # fmt: skip
        names = sorted({key for record in metrics for key in record if key.startswith("rewards/")})
        if len(names) == 1 and series(metrics, names[0])[1] == mean:
            names = []  # one function at weight 1: its line would hide under the total
        for index, key in enumerate(names, start=1):
            steps, values = series(metrics, key)
            draw_curve(axes, steps, values, key.removeprefix("rewards/"), COLOURS[index % len(COLOURS)], window, "--")
    else:
        for index, run in enumerate(runs):
            steps, values = series(run.metrics, "reward_mean")
            draw_curve(axes, steps, values, run.name, COLOURS[index % len(COLOURS)], window)
    return save(figure, axes, path)


def accuracy_plot(runs, path: Path) -> Path:
    """Training-batch accuracy per step, with held-out greedy accuracy before (step 0) and after (last step), and
    every `eval.every` steps (`eval/accuracy`) as a dashed line where the run evaluated during training."""
    figure, axes = new_axes("Accuracy: training batch (sampled) and held-out (greedy)", "accuracy")
    axes.set_ylim(-0.03, 1.03)
    window = smoothing_window(runs)
    for index, run in enumerate(runs):
        colour = COLOURS[index % len(COLOURS)]
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        steps, values = series(run.metrics, "accuracy")
        draw_curve(axes, steps, values, f"{prefix}training batch", colour, window)
        periodic = periodic_eval_points(run.metrics)
        if periodic:
            xs, ys = zip(*periodic)
            label = f"{prefix}held-out during training (eval.every)"
            line_colour = colour if len(runs) > 1 else COLOURS[1]  # one run: apart from the training-batch line
            axes.plot(xs, ys, color=line_colour, linestyle="--", linewidth=1.5, marker="D", markersize=4, label=label)
        points = held_out_points(run)
        if points:
            xs, ys = zip(*points)
            n = (run.evaluation or {}).get("n")
            label = f"{prefix}held-out before / after (n={n})"
            axes.plot(xs, ys, color=colour, linestyle="none", marker="s", markersize=9, label=label)
    return save(figure, axes, path)


def periodic_eval_points(metrics: list[dict]) -> list[tuple[int, float]]:
    """(step, held-out accuracy) of the steps that `eval.every` evaluated."""
    return [(record["step"], record["eval/accuracy"]) for record in metrics if record.get("eval/accuracy") is not None]


def held_out_points(run) -> list[tuple[int, float]]:
    evaluation = run.evaluation or {}
    points = []
    if "before" in evaluation:
        points.append((0, evaluation["before"]["accuracy"]))
    if "after" in evaluation:
        points.append((run.metrics[-1]["step"] if run.metrics else 0, evaluation["after"]["accuracy"]))
    return points


def length_plot(runs, path: Path) -> Path:
    figure, axes = new_axes("Completion length (mean over the batch)", "tokens")
    window = smoothing_window(runs)
    for index, run in enumerate(runs):
        steps, values = series(run.metrics, "completion_len_mean")
        draw_curve(
            axes, steps, values, run.name if len(runs) > 1 else "mean length", COLOURS[index % len(COLOURS)], window
        )
    limits = {((run.config or {}).get("rollout") or {}).get("max_new_tokens") for run in runs} - {None}
    for limit in sorted(limits):
        axes.axhline(limit, color="#555555", linestyle="--", linewidth=1, label=f"max_new_tokens = {limit}")
    return save(figure, axes, path)


def kl_plot(runs, path: Path) -> Path | None:
    """`kl` is the estimator the loss uses (grpo.kl_estimator), averaged over completion tokens."""
    grpo = [(run.config or {}).get("grpo") or {} for run in runs]
    estimators = "/".join(sorted({str(g["kl_estimator"]) for g in grpo if "kl_estimator" in g}))
    title = f"KL divergence to the reference policy ({estimators + ' estimate, ' if estimators else ''}per token)"
    if all(g.get("beta") == 0 for g in grpo):
        title += "\nbeta = 0: no reference model, so KL is not measured"
    return metric_plot(runs, "kl", title, "KL (nats)", path)


def phases(runs) -> list[str]:
    """Phase names in the order they first appear (generate, old_logprobs, reference, policy, optimizer)."""
    names: list[str] = []
    for run in runs:
        for record in run.metrics:
            names += [key for key in record if key.startswith("time/") and key not in names]
    return names


def step_time_plot(runs, path: Path) -> Path | None:
    """Seconds per step stacked by phase: per step for one run, the per-step mean for each of several runs."""
    keys = phases(runs)
    if not keys:
        return None
    if len(runs) == 1:
        figure, axes = new_axes("Time per step by phase", "seconds")
        steps = [record["step"] for record in runs[0].metrics]
        bottom = [0.0] * len(steps)
        for index, key in enumerate(keys):
            values = [record.get(key) or 0.0 for record in runs[0].metrics]
            axes.bar(
                steps,
                values,
                bottom=bottom,
                width=1.0 if len(steps) > 40 else 0.8,
                label=key.removeprefix("time/"),
                color=COLOURS[index % len(COLOURS)],
            )
            bottom = [b + v for b, v in zip(bottom, values)]
    else:
        figure, axes = new_axes("Mean time per step by phase", "seconds per step", xlabel="run")
        names = [run.name for run in runs]
        bottom = [0.0] * len(runs)
        for index, key in enumerate(keys):
            values = [sum(r.get(key) or 0.0 for r in run.metrics) / max(1, len(run.metrics)) for run in runs]
            axes.bar(
                names,
                values,
                bottom=bottom,
                width=0.6,
                label=key.removeprefix("time/"),
                color=COLOURS[index % len(COLOURS)],
            )
            bottom = [b + v for b, v in zip(bottom, values)]
        axes.tick_params(axis="x", labelrotation=15)
    axes.legend(fontsize="small", title="phase")
    return save(figure, axes, path)


def eval_plot(runs, path: Path) -> Path | None:
    """Held-out accuracy before and after training, grouped by run, each bar labelled with its value."""
    runs = [run for run in runs if run.evaluation and ("before" in run.evaluation or "after" in run.evaluation)]
    if not runs:
        return None
    sizes = sorted({run.evaluation.get("n") for run in runs}, key=str)
    figure, axes = new_axes(f"Held-out accuracy, greedy (n = {', '.join(map(str, sizes))})", "accuracy", xlabel="run")
    axes.set_ylim(0, 1.2)  # room for the value labels and the legend above bars of height 1
    axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    width = 0.38
    for offset, (when, colour) in enumerate([("before", "#9e9e9e"), ("after", COLOURS[0])]):
        xs = [i + (offset - 0.5) * width for i, run in enumerate(runs) if when in run.evaluation]
        ys = [run.evaluation[when]["accuracy"] for run in runs if when in run.evaluation]
        bars = axes.bar(xs, ys, width=width, color=colour, label=f"{when} training")
        axes.bar_label(bars, fmt="%.3f", padding=2)
    axes.set_xticks(range(len(runs)), [run.name for run in runs])
    axes.legend(fontsize="small", loc="upper center", ncols=2)
    return save(figure, axes, path)
