"""PPO against GRPO (issue 21): run `grpolab bench ppo` once and write its table and learning curves.

    PYTHONPATH=. python benchmarks/ppo_vs_grpo.py [--seeds 0,1,2] [--steps 30] [key=value ...]

writes benchmarks/results/ppo-vs-grpo.json (the bench's JSON line), ppo-vs-grpo.png (per-step training
accuracy of each seed, and the held-out accuracy before / after) and prints the markdown table that
benchmarks/results/ppo-vs-grpo.md quotes. The numbers are whatever the run measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ["rollout.max_new_tokens=32", "train.learning_rate=2e-5", "eval.n=50", "eval.max_new_tokens=32"]


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, held_out) = plt.subplots(1, 2, figsize=(11, 4))
    for side, colour in (("grpo", "tab:blue"), ("ppo", "tab:orange")):
        for index, accuracy in enumerate(record[f"{side}_train_accuracy"]):
            curves.plot(range(1, len(accuracy) + 1), accuracy, color=colour, alpha=0.6,
                        label=side.upper() if index == 0 else None)  # fmt: skip
        before, after = record[f"{side}_accuracy_before"], record[f"{side}_accuracy_after"]
        for b, a in zip(before, after):
            held_out.plot([0, 1], [b, a], color=colour, marker="o", alpha=0.6)
        held_out.plot([], [], color=colour, label=side.upper())
    curves.set(xlabel="step", ylabel="training accuracy (rollout)", title="learning curves, one line per seed")
    held_out.set(xticks=[0, 1], xticklabels=["before", "after"], ylabel="held-out greedy accuracy",
                 title=f"held-out accuracy ({record['steps']} steps)")  # fmt: skip
    curves.legend()
    held_out.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def table(record: dict) -> str:
    rows = [
        ("peak RSS (GB, median over seeds)", "peak_rss_gb"),
        ("step seconds (median)", "step_seconds"),
    ]
    lines = ["| | GRPO | PPO | PPO / GRPO |", "|---|---|---|---|"]
    for label, key in rows:
        grpo, ppo = record[f"grpo_{key}"], record[f"ppo_{key}"]
        lines.append(f"| {label} | {grpo} | {ppo} | {ppo / grpo:.2f} |")
    for part in record["grpo_state_gb"]:
        lines.append(f"| state: {part} (GB) | {record['grpo_state_gb'][part]} | {record['ppo_state_gb'][part]} | |")
    for phase in sorted(set(record["grpo_phase_seconds"]) | set(record["ppo_phase_seconds"])):
        grpo, ppo = record["grpo_phase_seconds"].get(phase, 0.0), record["ppo_phase_seconds"].get(phase, 0.0)
        lines.append(f"| phase {phase} (s) | {grpo} | {ppo} | |")
    for side in ("grpo", "ppo"):
        before, after = record[f"{side}_accuracy_before"], record[f"{side}_accuracy_after"]
        gains = [a - b for a, b in zip(after, before)]
        lines.append(
            f"| {side.upper()} held-out before -> after, per seed | "
            + ", ".join(f"{b:.2f} -> {a:.2f}" for b, a in zip(before, after))
            + f" (mean gain {statistics.mean(gains):+.3f}) | | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    command = [sys.executable, "-m", "grpolab", "bench", "ppo", *SETTINGS, *args.overrides,
               "--seeds", args.seeds, "--steps", str(args.steps), "--curve"]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["command"] = " ".join(["grpolab", *command[3:]])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ppo-vs-grpo.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(record, RESULTS / "ppo-vs-grpo.png")
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
