"""``prunekit report DIR``: method x sparsity table, Markdown / CSV files and PNG plots."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  prunekit report runs/ --out runs/report
  prunekit report runs/ --latency --batch-size 1 --device cpu --threads 2

DIR is an output root (holding runs/), a runs/ folder or one run directory. Writes report.md,
report.csv, accuracy_vs_sparsity.png and layer_sparsity_<s>.png. The MACs speedup is theoretical;
--latency also times the dense and final model of every run on this machine (median after
warm-up; the final model uses sparse kernels only where measured faster) in measured columns."""


def run(args: argparse.Namespace) -> int:
    from prunekit.experiments.latency import LatencyOptions
    from prunekit.experiments.report import skipped_lines, write_report

    latency = None
    if args.latency:
        latency = LatencyOptions(
            batch_size=args.batch_size,
            device=args.device,
            threads=args.threads,
            repeats=args.repeats,
        )
    elif (args.batch_size, args.device, args.threads, args.repeats) != (1, "cpu", None, 20):
        raise ValueError("--batch-size/--device/--threads/--repeats: only apply with --latency")
    report = write_report(args.directory, args.out, plots=not args.no_plots, latency=latency)
    for line in skipped_lines(report["skipped"]):
        print(line, file=sys.stderr)
    print(report["table"])
    print(f"{len(report['runs'])} runs; files:")
    for path in report["files"].values():
        print(f"  {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="tabulate and plot finished runs (Markdown, CSV, PNG)",
        description="Report accuracy (mean ± std over seeds), parameters, non-zeros, MACs, "
        "theoretical speedup and compression per method and sparsity; with --latency, "
        "measured latency too.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="output root, runs folder or run directory")
    parser.add_argument("--out", help="where to write the files (default: DIRECTORY)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--latency", action="store_true", help="time the dense and final model of every run"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="rows per timed forward pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads while timing")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes (median)")
    parser.set_defaults(func=run)
