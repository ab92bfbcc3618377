"""``prunekit demo``: the built-in default experiment (MNIST-1D, four methods, four sparsities)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from prunekit.commands._common import positive_int

EXAMPLE = """examples:
  prunekit demo
  prunekit demo --out /tmp/demo --workers 2
  prunekit demo --small          # a smoke test: seconds, on the digits with an MLP

Trains a small 1-D CNN on MNIST-1D (generated locally, nothing is downloaded) for two seeds,
prunes it to 50/80/90/95% sparsity with global magnitude, uniform magnitude, LAMP and BIMP,
retrains, then prints the table and writes report.md, report.csv and accuracy_vs_sparsity.png.
Re-running reuses the finished runs."""


def demo_config(out: str, small: bool = False) -> dict[str, Any]:
    """The demo's config (plain data, as it would be written in YAML)."""
    cfg: dict[str, Any] = {
        "name": "demo",
        "model": {"name": "cnn1d", "kwargs": {"channels": 32}},
        "data": {"name": "mnist1d", "kwargs": {"num_samples": 5000}},
        # One linear-decay dense run per seed serves all methods (BIMP needs linear decay).
        "train": {
            "epochs": 40,
            "batch_size": 128,
            "lr": 0.1,
            "lr_schedule": "linear",
            "weight_decay": 5e-4,
            "threads": 1,
            "checkpoint_every": 500,
        },
        "prune": {"criterion": "magnitude", "allocation": "global"},
        "retrain": {"epochs": 8, "schedule": "llr"},
        "metrics": {"file_sizes": True},
        "output": out,
        "sweep": {
            "sparsities": [0.5, 0.8, 0.9, 0.95],
            "seeds": [0, 1],
            "methods": {
                "global_magnitude": {"prune.allocation": "global"},
                "uniform_magnitude": {"prune.allocation": "uniform"},
                "lamp": {"prune.allocation": "lamp"},
                "bimp": {"prune.schedule": "bimp", "prune.phases": 3},
            },
        },
    }
    if small:
        # The digits (8x8 images, bundled with scikit-learn) with a one-hidden-layer MLP: a model
        # that learns (~97 % dense) in a few seconds, which no MNIST-1D model small enough does.
        cfg["name"] = "demo-small"
        cfg["data"] = {"name": "digits", "kwargs": {}}
        cfg["model"] = {"name": "mlp", "kwargs": {"hidden": [64]}}
        cfg["train"].update(epochs=10, batch_size=64)
        cfg["retrain"]["epochs"] = 1
        cfg["sweep"]["sparsities"] = [0.5, 0.9]
        cfg["sweep"]["seeds"] = [0]
        cfg["sweep"]["methods"]["bimp"]["prune.phases"] = 2
    return cfg


def run(args: argparse.Namespace) -> int:
    import torch

    from prunekit.experiments.config import resolve
    from prunekit.experiments.report import write_report
    from prunekit.experiments.sweep import run_sweep

    start = time.perf_counter()
    if args.out is None:
        args.out = "prunekit-demo-small" if args.small else "prunekit-demo"
    data = demo_config(args.out, args.small)
    data["train"]["threads"] = args.threads
    torch.set_num_threads(args.threads)
    cfg = resolve(data)
    # --small runs in this process: starting worker processes would cost more than its runs.
    workers = args.workers or (1 if args.small else min(2, os.cpu_count() or 1))
    outcome = run_sweep(cfg, workers=workers, log=(lambda _m: None) if args.quiet else print)
    if outcome.failed:
        for label, error in outcome.failed.items():
            print(f"failed: {label}: {error}")
        return 1
    report = write_report(args.out)
    print()
    print(report["table"])
    print()
    print(f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {args.out}:")
    for name in ("report.md", "report.csv", "accuracy_vs_sparsity.png"):
        print(f"  {report['files'][name]}")
    print(f"  {os.path.join(args.out, 'runs')}/  (one directory per run: compressed model, masks, "
          "metrics, log)")  # fmt: skip
    print(f"  {os.path.join(args.out, 'results.sqlite')}  (results database)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="train, prune (4 methods x 4 sparsities), retrain and report on MNIST-1D",
        description="The built-in demo: a few minutes on a laptop CPU (--small: seconds).\n\n"
        + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: prunekit-demo, or prunekit-demo-small with --small)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="a smoke test of the whole pipeline in seconds: the digits with an MLP, one "
        "seed, 50 and 90 %% sparsity",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        help="worker processes, at least 1 (default: up to 2; 1 with --small)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="PyTorch threads per worker (default: 1: the demo's models are so small that more "
        "threads only add OpenMP overhead)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    parser.set_defaults(func=run)
