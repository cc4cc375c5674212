"""Learning preserved? grpolab's and TRL's mean-reward curves over the same steps, seeds and hyper-parameters.

Runs `grpolab bench step --vs trl --warmup 0 --steps N --curve` once per seed (each side in its own process,
the same prompts in the same order, the configuration of issue 7 unless overridden), then writes the two
curves and a verdict: the difference grpolab - TRL of the mean reward, averaged over seeds, must not be below
zero by more than t standard errors of the per-seed differences (Student's t at 95% for that many seeds: "not
below TRL beyond noise").
`--combine a/curves.json b/curves.json` gives the verdict over earlier runs without running anything.

    python benchmarks/learning_vs_trl.py --steps 30 --seeds 0 --out runs/learning-vs-trl [key=value ...]

Writes <out>/curves.json and <out>/curves.md. Wall time: steps x (grpolab + TRL seconds per step) per seed,
about 30 x (3 + 33) s = 18 minutes per seed on a quiet 2-core machine (issue 7's TRL timing).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_seed(seed: int, steps: int, trl_python: str, overrides: list[str]) -> dict:
    command = [
        sys.executable, "-m", "grpolab", "bench", "step", "--vs", "trl", "--trl-python", trl_python,
        "--warmup", "0", "--steps", str(steps), "--curve", f"seed={seed}", *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# two-sided 95% Student-t quantiles by degrees of freedom (a handful of seeds is a small sample)
T_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def verdict(records: list[dict]) -> dict:
    """grpolab - TRL mean reward. With several seeds the noise is the spread of the per-seed mean differences
    (each curve is one trajectory: its steps are correlated, and two runs of one seed differ by more than the
    per-step spread suggests), and "beyond noise" is below -t * standard error with Student's t for that many
    seeds; with one seed only the per-step standard error is available, which understates it (then t = 2)."""
    per_seed = [statistics.fmean(g - t for g, t in zip(r["grpolab_rewards"], r["trl_rewards"])) for r in records]
    steps = [g - t for r in records for g, t in zip(r["grpolab_rewards"], r["trl_rewards"])]
    if len(per_seed) > 1:
        mean, error, noise = statistics.fmean(per_seed), statistics.stdev(per_seed) / math.sqrt(len(per_seed)), "seeds"
        t = T_95.get(len(per_seed) - 1, 2.0)
    else:
        mean, noise, t = statistics.fmean(steps), "steps (one seed: understated)", 2.0
        error = statistics.stdev(steps) / math.sqrt(len(steps)) if len(steps) > 1 else math.inf
    return {
        "mean_difference": round(mean, 4),
        "standard_error": round(error, 4),
        "noise_from": noise,
        "seed_differences": [round(d, 4) for d in per_seed],
        "grpolab_mean_reward": round(statistics.fmean(v for r in records for v in r["grpolab_rewards"]), 4),
        "trl_mean_reward": round(statistics.fmean(v for r in records for v in r["trl_rewards"]), 4),
        "t": t,
        "not_below_beyond_noise": mean >= -t * error,
    }


def table(records: list[dict]) -> str:
    lines = ["| seed | step | grpolab reward | TRL reward |", "|---|---|---|---|"]
    for record in records:
        for step, (g, t) in enumerate(zip(record["grpolab_rewards"], record["trl_rewards"]), 1):
            lines.append(f"| {record['seed']} | {step} | {g:.3f} | {t:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--trl-python", default=sys.executable)
    parser.add_argument("--out", default="runs/learning-vs-trl")
    parser.add_argument(
        "--combine", nargs="+", metavar="CURVES_JSON", help="no runs: the verdict over these earlier curves.json files"
    )
    args, overrides = parser.parse_known_args()
    records = []
    if args.combine:
        records = [record for path in args.combine for record in json.loads(Path(path).read_text())["runs"]]
    for seed in [] if args.combine else [int(s) for s in args.seeds.split(",")]:
        record = run_seed(seed, args.steps, args.trl_python, overrides)
        record["seed"] = seed
        records.append(record)
    summary = verdict(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curves.json").write_text(json.dumps({"summary": summary, "runs": records}, indent=1))
    (out / "curves.md").write_text(f"{json.dumps(summary)}\n\n{table(records)}\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
