"""`grpolab plan [CONFIG.yaml | PRESET] [key=value ...] [--json]`: the worst-case step of a training config,
measured before the run (grpolab/training/plan.py): per phase its seconds and peak memory, the state memory by
part, and with `train.memory_limit_gb=GB` whether it fits and which settings to try if it does not."""

from __future__ import annotations

import argparse
import json

from grpolab.config import Config, describe_keys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="measure the worst-case step of a training config (memory per phase, state by part) before the run",
        description=__doc__,
        epilog="configuration keys (key = default), as for grpolab train:\n" + "\n".join(describe_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    parser.add_argument("--json", action="store_true", help="print the measurement as one JSON line instead")
    parser.set_defaults(func=run, config_root=Config)


def run(args) -> int:
    from grpolab.commands.train import config_file, split_config_args
    from grpolab.config import load_config
    from grpolab.training.plan_check import report, run_plan

    path, overrides = split_config_args(args.args)
    config = load_config(config_file(path) if path else None, overrides)
    plan = run_plan(config)
    limit = config.train.memory_limit_gb
    if args.json:
        print(json.dumps({**plan, "limit_gb": limit or None, "fits": plan["peak_gb"] <= limit if limit else None}))
    else:
        print(report(config, plan, limit))
    return 0 if not limit or plan["peak_gb"] <= limit else 1
