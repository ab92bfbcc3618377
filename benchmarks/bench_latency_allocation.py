"""Latency-aware structured allocation vs uniform L1 at equal measured latency (CPU).

1. Speed: ResNet-56 (CIFAR shapes, random weights) at ``--batch``: uniform group-L1 at ``--ratio``
   (plain, and with ``round_to=8``), then ``prunekit.structured.prune(target_latency=...)`` aimed
   at the uniform model's measured latency (latency table per group on this CPU, importance per
   millisecond, target bisected on the measured latency of the whole pruned model). Reported:
   MACs ratio (theoretical), measured ms per batch, speedup, speedup / MACs ratio.
2. Accuracy: a 1-D CNN trained on MNIST-1D, pruned the same two ways (latency-aware at the uniform
   model's measured latency), both retrained for the same epochs with the same seed; test top-1
   next to the measured latencies, so "equal latency" can be checked in the table.

All timings of one table are interleaved in one process (a burst of load slows all models
alike); medians after warm-up; denormals flushed.

    python benchmarks/bench_latency_allocation.py --threads 1 --batch 128
    python benchmarks/bench_latency_allocation.py --quick       # about a minute
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import prunekit.structured as st
from prunekit.core.metrics import count_macs
from prunekit.data import create_dataset
from prunekit.models import create_model
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


def build(dense: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, object]:
    """Uniform L1 (plain and round_to=8) and latency-aware at the uniform model's latency."""
    dense.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.StructuredPruningWarning)  # fixed residual groups
        uniform, _ = st.prune(dense, x[:1], ratio=args.ratio)
        rounded, _ = st.prune(dense, x[:1], ratio=args.ratio, round_to=8)
        goal = interleaved({"dense": dense, "uniform": uniform.eval()}, x, args.reps)
        target = goal["uniform"] / goal["dense"]
        start = time.perf_counter()
        aware, plan = st.prune(
            dense,
            x[:1],
            target_latency=target,
            latency_inputs=x,
            min_channels=args.min_channels,
        )
        seconds = time.perf_counter() - start
    models = {
        "dense": dense,
        "uniform L1": uniform.eval(),
        "uniform r8": rounded.eval(),
        "latency-aware": aware.eval(),
    }
    return {"models": models, "target": target, "plan": plan, "seconds": seconds}


def table(models: dict[str, nn.Module], x: torch.Tensor, reps: int, extra: dict | None = None):
    times = interleaved(models, x, reps)
    dense = models["dense"]
    macs0 = count_macs(dense, x[:1])
    tail = "test top-1" if extra else ""
    print(
        f"{'model':<14} {'MACs ratio':>11} {'ms/batch':>10} {'speedup':>9} "
        f"{'speedup/MACs':>13} {tail}"
    )
    for name, model in models.items():
        macs = macs0 / count_macs(model, x[:1])
        speed = times["dense"] / times[name]
        more = f"{extra[name] * 100:>9.2f}%" if extra else ""
        print(
            f"{name:<14} {macs:>10.2f}x {times[name] * 1e3:>10.2f} {speed:>8.2f}x "
            f"{speed / macs:>13.2f} {more}"
        )
    return times


def resnet_section(args: argparse.Namespace) -> None:
    print(f"\n## 1. ResNet-56 (random weights), batch {args.batch}, CIFAR shapes")
    torch.manual_seed(0)
    dense = create_model("resnet56").eval()
    x = torch.randn(args.batch, 3, 32, 32)
    out = build(dense, x, args)
    plan = out["plan"]
    print(
        f"{torch.get_num_threads()} thread(s); latency-aware target {out['target']:.3f} of dense "
        f"(the uniform model's measured ratio); table + search {out['seconds']:.0f} s; "
        f"search measured {plan.latency_ratio:.3f}"
    )
    table(out["models"], x, args.reps)
    widths = sorted({(c.before, c.after) for c in plan.changes})
    print(f"latency-aware widths (before, after): {widths}")


def accuracy_section(args: argparse.Namespace) -> None:
    print("\n## 2. MNIST-1D, cnn1d: accuracy after equal retraining at equal measured latency")
    data = create_dataset("mnist1d", num_samples=args.samples, seed=0)
    torch.manual_seed(0)
    dense = create_model("cnn1d", channels=args.cnn_channels)
    Trainer(dense, data.train, epochs=args.epochs, batch_size=128, seed=0).fit()
    x = data.test.x[: args.batch]
    out = build(dense, x, args)
    accs = {"dense": evaluate(dense.eval(), data.test)["top1"]}
    for name, model in out["models"].items():
        if name == "dense":
            continue
        model.train()
        Trainer(model, data.train, epochs=args.retrain_epochs, batch_size=128, seed=0).fit()
        accs[name] = evaluate(model.eval(), data.test)["top1"]
    print(
        f"dense trained {args.epochs:g} epochs; pruned models retrained {args.retrain_epochs:g}; "
        f"batch {args.batch}, {torch.get_num_threads()} thread(s); latency-aware target "
        f"{out['target']:.3f} of dense"
    )
    table(out["models"], x, args.reps, accs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument(
        "--min-channels", type=float, default=0.25, help="floor per group for latency-aware"
    )
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--retrain-epochs", type=float, default=5)
    parser.add_argument("--samples", type=int, default=4000, help="MNIST-1D examples")
    parser.add_argument("--cnn-channels", type=int, default=64)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="batch 32, 5 reps, fewer epochs (a smoke run)"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.reps, args.epochs, args.retrain_epochs = 32, 5, 3, 2
        args.samples = 2000
    torch.set_num_threads(args.threads)
    # Weight decay leaves near-zero weights whose denormal products slow CPU kernels many times
    # over; pruning removes exactly those channels, which would fake a speed-up.
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    if not args.skip_resnet:
        resnet_section(args)
    if not args.skip_accuracy:
        accuracy_section(args)
    print("MACs ratio is theoretical; ms/batch and speedups are measured medians.")


if __name__ == "__main__":
    main()
