"""``prunekit sweep CONFIG.yaml``: a grid of sparsities x methods x seeds."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """example:
  prunekit sweep examples/configs/sweep.yaml --workers 2

The config's 'sweep' section lists sparsities, seeds and methods (label -> dotted overrides):
  sweep:
    sparsities: [0.5, 0.8, 0.9]
    seeds: [0, 1]
    methods:
      global_magnitude: {prune.allocation: global}
      lamp: {prune.allocation: lamp}
      bimp: {prune.schedule: bimp}
The dense model is trained once per seed and shared; finished arms are skipped on a re-run."""


def run(args: argparse.Namespace) -> int:
    from prunekit.experiments.config import load_config
    from prunekit.experiments.report import write_report
    from prunekit.experiments.sweep import run_sweep

    cfg = load_config(args.config, args.set)
    if args.output:
        cfg.output = args.output
    outcome = run_sweep(cfg, workers=args.workers)
    print(f"sweep finished in {outcome.wall_s:.1f} s: {len(outcome.results)} runs")
    if outcome.results and not args.no_report:
        report = write_report(cfg.output)
        print(report["table"])
        print(f"report: {', '.join(report['files'].values())}")
    if outcome.failed:
        for label, error in outcome.failed.items():
            print(f"failed: {label}: {error}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sweep",
        help="run a grid of sparsities x methods x seeds in parallel workers",
        description="Run a grid of experiments sharing dense models.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config with a 'sweep' section")
    parser.add_argument("--workers", type=int, help="worker processes (default: sweep.workers)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    parser.add_argument("--output", help="output root (overrides the config's 'output')")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    parser.set_defaults(func=run)
