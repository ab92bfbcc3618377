"""``prunekit report DIR``: method x sparsity table, Markdown / CSV files and PNG plots."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """example:
  prunekit report runs/ --out runs/report

DIR is an output root (holding runs/), a runs/ folder or one run directory. Writes report.md,
report.csv, accuracy_vs_sparsity.png and layer_sparsity_<s>.png."""


def run(args: argparse.Namespace) -> int:
    from prunekit.experiments.report import skipped_lines, write_report

    report = write_report(args.directory, args.out, plots=not args.no_plots)
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
        "theoretical speedup and compression per method and sparsity.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="output root, runs folder or run directory")
    parser.add_argument("--out", help="where to write the files (default: DIRECTORY)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.set_defaults(func=run)
