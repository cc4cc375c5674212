"""`grpolab report RUN_DIR [RUN_DIR ...] [--output DIR]`: report.md and PNG plots of one run, or several overlaid."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report.md and plots of a run, or overlay several runs",
        description=(
            "Write report.md and plots/*.png from a run folder's metrics.jsonl, eval.json and samples.jsonl. "
            "One run: into the run folder. Several runs: their curves overlaid, with the config keys that differ, "
            "into --output (default: a new folder compare-<first>-vs-<second>... beside the first run)."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (as written by grpolab train)")
    parser.add_argument("--output", metavar="DIR", help="where report.md and plots/ go (never another run's folder)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from grpolab.report.writer import write_report

    print(write_report(args.runs, args.output))
    return 0
