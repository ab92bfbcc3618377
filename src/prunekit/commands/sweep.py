"""``prunekit sweep CONFIG.yaml``: a grid of sparsities x methods x seeds."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from prunekit.commands._common import add_out_argument, add_threads_argument, positive_int

if TYPE_CHECKING:
    from prunekit.experiments.config import ExperimentConfig

EXAMPLE = """examples:
  prunekit sweep examples/configs/sweep.yaml --workers 2
  prunekit sweep examples/configs/sweep.yaml --dry-run     # list the arms, run nothing

The config's 'sweep' section lists sparsities, seeds and methods (label -> dotted overrides):
  sweep:
    sparsities: [0.5, 0.8, 0.9]
    seeds: [0, 1]
    methods:
      global_magnitude: {prune.allocation: global}
      lamp: {prune.allocation: lamp}
      bimp: {prune.schedule: bimp}
The dense model is trained once per seed and shared; finished arms are skipped on a re-run."""


def dry_run(cfg: ExperimentConfig) -> int:
    """Print every arm (validated) with its run folder and whether it is finished."""
    from prunekit.core.report import format_table
    from prunekit.experiments.config import trains_dense
    from prunekit.experiments.runner import dense_dir, run_dir
    from prunekit.experiments.sweep import expand

    arms = expand(cfg)
    rows = []
    dense = set()
    for arm in arms:
        directory = run_dir(arm.config)
        done = (directory / "result.json").is_file()
        level = f"{arm.sparsity:g}" if arm.fraction is None else f"kept {arm.fraction:g}"
        rows.append([arm.method, level, str(arm.seed), "yes" if done else "no",
                     str(directory)])  # fmt: skip
        if trains_dense(arm.config):  # the others train from scratch
            dense.add(str(dense_dir(arm.config)))
    print(format_table(["method", "sparsity", "seed", "finished", "run directory"], rows))
    todo = sum(row[3] == "no" for row in rows)
    print(f"{len(arms)} arms ({len(arms) - todo} finished, {todo} to run), "
          f"{len(dense)} dense model folder(s); nothing was run (--dry-run)")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    from prunekit.experiments.config import load_config
    from prunekit.experiments.report import skipped_lines, write_report
    from prunekit.experiments.sources import written_by_a_run
    from prunekit.experiments.sweep import run_sweep

    # the user's own config file may import its model / data factories; one in a run directory
    # (an output folder, maybe from elsewhere) is data and never does
    cfg = load_config(args.config, args.set, allow_import=not written_by_a_run(args.config))
    if args.out:
        cfg.output = args.out
    if args.threads:
        cfg.train.threads = args.threads
    if args.progress is not None:
        cfg.train.progress = args.progress
    if args.dry_run:
        return dry_run(cfg)
    outcome = run_sweep(cfg, workers=args.workers)
    print(f"sweep finished in {outcome.wall_s:.1f} s: {len(outcome.results)} runs")
    if outcome.results and not args.no_report:
        report = write_report(cfg.output)
        for line in skipped_lines(report["skipped"]):
            print(line, file=sys.stderr)
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
    parser.add_argument(
        "--workers", type=positive_int, help="worker processes (default: sweep.workers)"
    )
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    add_out_argument(parser, "output root (default: the config's 'output')", "--output")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every arm and list them with their run folders; run nothing",
    )
    add_threads_argument(parser, "train.threads, else cores / workers")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-run progress bars (default: train.progress, off: parallel workers would "
        "interleave their bars; the sweep prints one line per finished arm)",
    )
    parser.set_defaults(func=run)
