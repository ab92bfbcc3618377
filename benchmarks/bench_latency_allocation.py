"""Latency-aware structured allocation vs uniform L1 at equal measured latency (CPU).

1. Accuracy: a 1-D CNN on MNIST-1D is trained dense, pruned (a) uniformly with group L1 at
   ``--ratio`` and (b) with ``prune_for_latency`` targeting the latency that (a) measured, then both
   are retrained for the same epochs. Reported: test accuracy, MACs ratio (theoretical), measured
   speedup at ``--batch``.
2. Speed: ResNet-56 (CIFAR shapes) at ``--batch``: uniform L1 at ``--ratio`` vs latency-aware at
   the uniform model's measured latency: MACs ratio, measured speedup, speedup / MACs ratio.

    python benchmarks/bench_latency_allocation.py --threads 1 --batch 128
    python benchmarks/bench_latency_allocation.py --skip-resnet   # accuracy section only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import prunekit.structured as st
from prunekit.core.metrics import count_macs
from prunekit.data import create_dataset
from prunekit.models import create_model
from prunekit.structured.latency import prune_for_latency
from prunekit.training.trainer import Trainer, evaluate


def interleaved(models: dict[str, nn.Module], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds per forward pass, calls interleaved so machine load hits all alike."""
    fns: dict[str, Callable[[], object]] = {k: (lambda m=m: m(x)) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(3):  # warm-up (oneDNN builds its kernels for each new shape)
            for fn in fns.values():
                fn()
        for _ in range(reps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def compare(dense: nn.Module, x: torch.Tensor, ratio: float, reps: int, levels: int, floor: float):
    """Uniform L1 at ``ratio``, then latency-aware with its table target bisected until its
    measured latency matches the uniform model's. Returns (uniform, aware, times, build s)."""
    dense.eval()
    uniform, _ = st.prune(copy.deepcopy(dense), x[:1], ratio=ratio)
    uniform.eval()
    goal = interleaved({"dense": dense, "uniform": uniform}, x, reps)
    goal = goal["uniform"] / goal["dense"]
    start = time.perf_counter()
    _, plan = prune_for_latency(copy.deepcopy(dense), x, 0.5, levels=levels, min_channels=floor)
    build = time.perf_counter() - start
    low, high = 0.02, 0.98
    aware = None
    for _ in range(args_bisect_steps):
        target = (low + high) / 2
        aware, plan = prune_for_latency(
            copy.deepcopy(dense), x, target, table=plan.table, min_channels=floor
        )
        aware.eval()
        t = interleaved({"dense": dense, "aware": aware}, x, max(3, reps // 2))
        measured = t["aware"] / t["dense"]
        if abs(measured - goal) < 0.03 * goal:
            break
        low, high = (target, high) if measured < goal else (low, target)
    times = interleaved({"dense": dense, "uniform": uniform, "latency-aware": aware}, x, reps)
    return uniform, aware, times, build, plan


args_bisect_steps = 8


def row(name: str, model: nn.Module, dense: nn.Module, x1: torch.Tensor, times: dict, extra=""):
    macs = count_macs(dense, x1) / count_macs(model, x1)
    speed = times["dense"] / times[name]
    print(
        f"{name:<14} {macs:>10.2f}x {times[name] * 1e3:>10.2f} {speed:>8.2f}x "
        f"{speed / macs:>13.2f} {extra}"
    )


def header(first: str = "") -> None:
    print(
        f"{'model':<14} {'MACs ratio':>11} {'ms/batch':>10} {'speedup':>9} "
        f"{'speedup/MACs':>13} {first}"
    )


def accuracy_section(args: argparse.Namespace) -> None:
    print("\n## 1. MNIST-1D, cnn1d: accuracy after equal retraining at equal measured latency")
    data = create_dataset("mnist1d", num_samples=4000, seed=0)
    torch.manual_seed(0)
    dense = create_model("cnn1d", channels=args.cnn_channels)
    Trainer(dense, data.train, epochs=args.epochs, batch_size=128, seed=0).fit()
    x = data.test.x[: args.batch]
    uniform, aware, times, build, _ = compare(
        dense, x, args.ratio, args.reps, args.levels, args.min_channels
    )
    accs = {}
    for name, model in (("uniform", uniform), ("latency-aware", aware)):
        model.train()
        Trainer(model, data.train, epochs=args.retrain_epochs, batch_size=128, seed=0).fit()
        model.eval()
        accs[name] = evaluate(model, data.test)["top1"]
    accs["dense"] = evaluate(dense.eval(), data.test)["top1"]
    print(
        f"dense trained {args.epochs} epochs; pruned models retrained {args.retrain_epochs}; "
        f"batch {args.batch}, {torch.get_num_threads()} thread(s); table built in {build:.1f} s"
    )
    header("test top-1")
    for name, model in (("dense", dense), ("uniform", uniform), ("latency-aware", aware)):
        row(name, model, dense, x[:1], times, f"{accs[name] * 100:>9.2f}%")


def resnet_section(args: argparse.Namespace) -> None:
    print(f"\n## 2. ResNet-56 (random weights), batch {args.batch}, CIFAR shapes")
    torch.manual_seed(0)
    dense = create_model("resnet56").eval()
    x = torch.randn(args.batch, 3, 32, 32)
    uniform, aware, times, build, plan = compare(
        dense, x, args.ratio, args.reps, args.levels, args.min_channels
    )
    print(f"{torch.get_num_threads()} thread(s); table built in {build:.1f} s")
    header()
    for name, model in (("dense", dense), ("uniform", uniform), ("latency-aware", aware)):
        row(name, model, dense, x[:1], times)
    widths = sorted(set(plan.widths.values()))
    print(f"latency-aware widths (before, after): {widths}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--levels", type=int, default=8, help="ladder steps per group table")
    parser.add_argument(
        "--min-channels", type=float, default=0.25, help="floor per group for latency-aware"
    )
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--retrain-epochs", type=float, default=5)
    parser.add_argument("--cnn-channels", type=int, default=64)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Weight decay leaves near-zero weights whose denormal products slow CPU kernels many times
    # over; pruning removes exactly those channels, which would fake a speed-up.
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    if not args.skip_accuracy:
        accuracy_section(args)
    if not args.skip_resnet:
        resnet_section(args)
    print("MACs ratio is theoretical; ms/batch and speedups are measured medians.")


if __name__ == "__main__":
    main()
