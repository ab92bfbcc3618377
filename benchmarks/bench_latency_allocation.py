"""Latency-aware structured allocation vs uniform L1 at equal measured latency (CPU).

1. Speed: ResNet-56 (CIFAR shapes, random weights) at ``--batch``: uniform group-L1 at ``--ratio``
   (plain, and with ``round_to=8``), then what ``prunekit.structured.prune(target_latency=...)``
   does, aimed at the uniform model's measured latency (latency table per group on this CPU,
   importance per millisecond, target bisected on the measured latency of the whole pruned
   model), once per ``--min-channels`` floor (25% and 50% of each group by default). Reported:
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
import copy
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
from prunekit.structured.latency import fit_latency, latency_table
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


def latency_aware(
    dense: nn.Module, x: torch.Tensor, target: float, floors: list[float]
) -> tuple[dict[str, nn.Module], dict[str, float], float]:
    """What ``st.prune(dense, x[:1], target_latency=target, latency_inputs=x, min_channels=f)``
    does, for each floor ``f``, with one latency table shared by all floors (it takes most of
    the time). Returns the models, the ratio each search measured, and the seconds spent."""
    start = time.perf_counter()
    graph = st.build_graph(dense, x[:1])
    groups = st.find_groups(graph)
    gen = torch.Generator().manual_seed(0)
    scores = {
        gi: st.group_importance(dense, g, "l1", "sum", "mean", gen)
        for gi, g in enumerate(groups)
        if g.prunable
    }
    params = dict(dense.named_parameters()) | dict(dense.named_buffers())
    sizes = {key: int(params[key[0]].shape[key[1]]) for key in graph.dims}
    table = latency_table(dense, x, groups, levels=8)
    models, measured = {}, {}
    for floor in floors:
        fit = fit_latency(dense, groups, scores, sizes, x, target, table=table, min_channels=floor)
        model = copy.deepcopy(dense)
        st.shrink(model, st.keep_indices(groups, fit.pruned, sizes))
        name = f"aware f{floor:g}"
        models[name] = model.eval()
        measured[name] = fit.pruned_seconds / fit.dense_seconds
    return models, measured, time.perf_counter() - start


def build(dense: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, object]:
    """Uniform L1 (plain and round_to=8) and latency-aware at the uniform model's latency."""
    dense.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.StructuredPruningWarning)  # fixed residual groups
        uniform, _ = st.prune(dense, x[:1], ratio=args.ratio)
        rounded, _ = st.prune(dense, x[:1], ratio=args.ratio, round_to=8)
        goal = interleaved({"dense": dense, "uniform": uniform.eval()}, x, args.reps)
    target = goal["uniform"] / goal["dense"]
    aware, measured, seconds = latency_aware(dense, x, target, args.min_channels)
    models = {"dense": dense, "uniform L1": uniform.eval(), "uniform r8": rounded.eval(), **aware}
    return {"models": models, "target": target, "measured": measured, "seconds": seconds}


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
    print(
        f"{torch.get_num_threads()} thread(s); latency-aware target {out['target']:.3f} of dense "
        f"(the uniform model's measured ratio); tables + searches {out['seconds']:.0f} s; "
        f"searches measured {fmt(out['measured'])}"
    )
    table(out["models"], x, args.reps)
    for name, model in out["models"].items():
        if name.startswith("aware"):
            print(f"{name} widths (before, after): {widths(dense, model)}")


def fmt(ratios: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())


def widths(dense: nn.Module, model: nn.Module) -> list[tuple[int, int]]:
    """Distinct (before, after) output widths of the Conv1d / Conv2d layers."""
    pairs = zip(dense.modules(), model.modules(), strict=True)
    convs = (nn.Conv1d, nn.Conv2d)
    return sorted({(a.out_channels, b.out_channels) for a, b in pairs if isinstance(a, convs)})


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
        f"{out['target']:.3f} of dense; searches measured {fmt(out['measured'])}"
    )
    table(out["models"], x, args.reps, accs)
    for name, model in out["models"].items():
        if name.startswith("aware"):
            print(f"{name} widths (before, after): {widths(dense, model)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument(
        "--min-channels",
        type=float,
        nargs="+",
        default=[0.25, 0.5],
        help="floors per group for latency-aware (one model each; one shared table)",
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
