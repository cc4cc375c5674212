"""Reward curves of every preset on the same task: runs `grpolab train <preset>` (grpolab/configs/) for N steps
each (sequentially, one process at a time) and tabulates the mean reward per step from each run's
metrics.jsonl, plus a plot when matplotlib is installed.

    python benchmarks/variant_curves.py --steps 30 --out runs/variant-curves [key=value ...]

Extra key=value arguments are passed to every run (e.g. smaller rollouts on a CPU). Writes
<out>/curves.md (the table), <out>/curves.json and, with matplotlib, <out>/curves.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ["grpo", "r1_zero", "dr_grpo", "dapo", "gspo"]
ROOT = Path(__file__).resolve().parent.parent


def run_preset(preset: str, steps: int, out: Path, overrides: list[str]) -> tuple[list[dict], float]:
    run_dir = out / preset
    cmd = [
        sys.executable, "-m", "grpolab", "train", str(ROOT / "grpolab" / "configs" / f"{preset}.yaml"),
        f"train.max_steps={steps}", f"output_dir={run_dir}", "overwrite=true", "log.quiet=true", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return records, seconds


def table(curves: dict[str, list[dict]], key: str) -> str:
    presets = list(curves)
    steps = max(len(records) for records in curves.values())
    lines = ["| step | " + " | ".join(presets) + " |", "|---" * (len(presets) + 1) + "|"]
    for step in range(steps):
        cells = [f"{curves[p][step][key]:.3f}" if step < len(curves[p]) else "" for p in presets]
        lines.append(f"| {step + 1} | " + " | ".join(cells) + " |")
    means = []
    for p in presets:
        tail = [r[key] for r in curves[p][-10:]]
        means.append(f"{sum(tail) / max(1, len(tail)):.3f}")
    lines.append("| mean of last 10 | " + " | ".join(means) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], key: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(7, 4))
    for preset, records in curves.items():
        axes.plot([r["step"] for r in records], [r[key] for r in records], label=preset)
    axes.set_xlabel("step")
    axes.set_ylabel(key)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/variant-curves")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("overrides", nargs="*", help="key=value passed to every run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    curves, seconds = {}, {}
    for preset in args.presets.split(","):
        curves[preset], seconds[preset] = run_preset(preset, args.steps, out, args.overrides)
        print(f"{preset}: {len(curves[preset])} steps in {seconds[preset]:.0f} s", flush=True)
        (out / "curves.json").write_text(json.dumps({"curves": curves, "seconds": seconds}))
    text = "## reward_mean per step\n\n" + table(curves, "reward_mean")
    text += "\n\n## accuracy (fraction of correct samples) per step\n\n" + table(curves, "accuracy")
    text += "\n\nwall seconds per run: " + ", ".join(f"{p} {s:.0f}" for p, s in seconds.items()) + "\n"
    (out / "curves.md").write_text(text)
    plot(curves, "reward_mean", out / "curves.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
