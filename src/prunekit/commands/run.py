"""``prunekit run CONFIG.yaml``: one experiment end to end, resumable."""

from __future__ import annotations

import argparse

from prunekit.commands._common import (
    add_out_argument,
    add_progress_argument,
    add_threads_argument,
    apply_common,
)

EXAMPLE = """examples:
  prunekit run examples/configs/one_shot.yaml
  prunekit run examples/configs/imp.yaml --set prune.sparsity=0.95 --set seed=1
  prunekit run examples/configs/one_shot.yaml --dry-run
  prunekit run examples/configs/one_shot.yaml --out /tmp/runs --threads 2

The run directory is <output>/runs/<name>-<config hash>; a finished run is not run again, an
interrupted one resumes from its last checkpoint."""


def run(args: argparse.Namespace) -> int:
    from prunekit.experiments.config import load_config
    from prunekit.experiments.runner import dry_run, run_experiment
    from prunekit.experiments.sources import written_by_a_run

    # the user's own config file may import its model / data factories; one in a run directory
    # (an output folder, maybe from elsewhere) is data and never does
    cfg = load_config(args.config, args.set, allow_import=not written_by_a_run(args.config))
    if args.out:
        cfg.output = args.out
    apply_common(cfg, args)
    sw = cfg.sweep
    if sw.sparsities or sw.methods or sw.seeds or sw.fractions or sw.scores:
        print("note: this config has a 'sweep' section; 'prunekit run' runs the base config only "
              "(use 'prunekit sweep' for the grid)")  # fmt: skip
    if args.dry_run:
        dry_run(cfg)
        return 0
    result = run_experiment(cfg, quiet=args.quiet)
    final = result["final"]
    acc = f"test_top1={final['test_top1']:.4f}" if "test_top1" in final else str(final)
    dp = result.get("data_prune")
    level = (
        f"kept {dp['kept']} of {dp['num_examples']} examples"
        if dp
        else f"sparsity {result['sparsity']:.4f}"
    )
    print(f"{result['method']}: {level}, {acc}")
    print(f"outputs: {result['run_dir']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run one experiment from a YAML config (train, prune, retrain, evaluate, save)",
        description="Run one experiment: dense training (or a dense checkpoint), pruning, "
        "retraining, evaluation; the sparse model is saved compressed.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config (see docs/cli.md)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 (repeatable; values are YAML)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the config and plan only")
    add_out_argument(parser, "output root (default: the config's 'output')", "--output")
    parser.add_argument("--quiet", action="store_true", help="log to the run's log.txt only")
    add_threads_argument(parser, "train.threads, else min(physical cores, idle cores, 4)")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
