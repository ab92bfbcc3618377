"""Compression-aware SFW on MNIST-1D: accuracy after compression *without retraining*.

Per seed, a small BatchNorm CNN (3 Conv1d + BN + ReLU, 32 channels) is trained for the same
number of epochs by
  * SGD (momentum 0.9, weight decay 5e-4, linear warm-up + decay) -- the baseline, and
  * stochastic Frank-Wolfe under a k-support norm ball per layer (k = ``--k-fraction`` of each
    layer's weights, radius from the init scale tau, momentum 0.9, gradient rescaling, the same
    LR shape), biases in L2 balls.
Both are then pruned by magnitude (global and uniform allocation) at several sparsities and
evaluated on the test set with no retraining: no gradient step; only the BatchNorm running
statistics are recomputed from 6 training batches, for both models alike. With ``--extras`` (default on), the same is done for
structured compression (group k-support on conv filters, k = ``--group-k``, vs SGD, then
filter-norm pruning) and low rank (spectral k-support on the two wide convs, k =
``--spectral-k``, vs SGD, then truncated SVD, factorised into two convs).

    python benchmarks/bench_sfw.py                      # 3 seeds, a few minutes on 2 cores
    python benchmarks/bench_sfw.py --seeds 5 --epochs 40 --no-extras
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sfw_soups_common import (  # noqa: E402
    BNCNN,
    accuracy,
    batches,
    fmt_table,
    linear_lr,
    mean_std,
    mnist1d_splits,
    train,
)

from prunekit import frank_wolfe as fw  # noqa: E402
from prunekit.core.targets import Targets  # noqa: E402
from prunekit.training.soups import recalibrate_batchnorm  # noqa: E402

CONVS = Targets(module_types=(nn.Conv1d,))
WIDE = Targets(include=[r"^features\.(3|6)\.weight$"])


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return BNCNN(channels=32)


def _recal(model: nn.Module, data: dict) -> nn.Module:
    recalibrate_batchnorm(model, batches(*data["train"], 128, seed=0)[:6])
    return model


def train_sgd(seed: int, data: dict, epochs: int) -> nn.Module:
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = epochs * len(batches(*data["train"], 128))
    train(model, opt, data["train"], epochs, seed=seed, lr_fn=linear_lr(0.1, steps))
    return model


def train_sfw(
    seed: int, data: dict, epochs: int, kind: str, args: argparse.Namespace, **kw
) -> nn.Module:
    model = _model(seed)
    groups = fw.constraints_for_model(model, kind, tau=args.tau, **kw)
    opt = fw.SFW(groups, lr=args.sfw_lr, momentum=0.9, rescale="gradient")
    opt.make_feasible()
    steps = epochs * len(batches(*data["train"], 128))
    train(model, opt, data["train"], epochs, seed=seed, lr_fn=linear_lr(args.sfw_lr, steps))
    worst = max(r for r in opt.feasibility() if r is not None)
    assert worst <= 1 + 1e-4, f"iterate left the feasible set ({worst})"
    return model


def after_magnitude(model: nn.Module, sparsity: float, allocation: str, data: dict) -> float:
    probe = copy.deepcopy(model)
    if sparsity > 0:
        fw.prune_magnitude(probe, sparsity, allocation=allocation)
    return accuracy(_recal(probe, data), data["test"])


def after_filters(model: nn.Module, sparsity: float, data: dict) -> float:
    probe = copy.deepcopy(model)
    if sparsity > 0:
        fw.prune_filters(probe, sparsity, targets=CONVS)
    return accuracy(_recal(probe, data), data["test"])


def after_low_rank(model: nn.Module, fraction: float, data: dict) -> tuple[float, float]:
    probe = copy.deepcopy(model)
    res = fw.low_rank(probe, rank_fraction=fraction, targets=WIDE, factorize=True)
    return accuracy(_recal(probe, data), data["test"]), fw.rank_compression(res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--k-fraction", type=float, default=0.05)
    parser.add_argument("--group-k", type=float, default=0.25)
    parser.add_argument("--spectral-k", type=float, default=0.125)
    parser.add_argument("--tau", type=float, default=10.0)
    parser.add_argument("--sfw-lr", type=float, default=1.0)
    parser.add_argument(
        "--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.9, 0.95]
    )
    parser.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist1d_splits(seed=0)
    t_start = time.time()
    mag: dict[tuple, list[float]] = {}
    filt: dict[tuple, list[float]] = {}
    rank: dict[tuple, list[float]] = {}
    ratios: dict[float, float] = {}
    filter_levels = [0.0, 0.25, 0.5, 0.75]
    rank_levels = [1.0, 0.5, 0.25, 0.125]
    for seed in range(args.seeds):
        t0 = time.time()
        sgd = train_sgd(seed, data, args.epochs)
        sfw = train_sfw(seed, data, args.epochs, "k_support", args, k_fraction=args.k_fraction)
        for s in args.sparsities:
            for alloc in ("global", "uniform"):
                mag.setdefault(("SGD", alloc, s), []).append(after_magnitude(sgd, s, alloc, data))
                mag.setdefault(("SFW k-support", alloc, s), []).append(
                    after_magnitude(sfw, s, alloc, data)
                )
        if args.extras:
            grp = train_sfw(
                seed, data, args.epochs, "group_k_support", args, k=args.group_k, targets=CONVS
            )
            spec = train_sfw(
                seed,
                data,
                args.epochs,
                "spectral_k_support",
                args,
                k=args.spectral_k,
                targets=WIDE,
                svd_method="exact",
            )
            for s in filter_levels:
                filt.setdefault(("SGD", s), []).append(after_filters(sgd, s, data))
                filt.setdefault(("SFW group k-support", s), []).append(after_filters(grp, s, data))
            for f in rank_levels:
                acc, ratio = after_low_rank(sgd, f, data)
                rank.setdefault(("SGD", f), []).append(acc)
                acc2, _ = after_low_rank(spec, f, data)
                rank.setdefault(("SFW spectral k-support", f), []).append(acc2)
                ratios[f] = ratio
        print(
            f"seed {seed}: dense SGD {accuracy(sgd, data['test']):.4f}, SFW "
            f"{accuracy(sfw, data['test']):.4f} ({time.time() - t0:.0f}s)",
            flush=True,
        )

    print("\nUnstructured magnitude pruning, no retraining (test accuracy %, mean ± sd):")
    rows = []
    for s in args.sparsities:
        row = [f"{s:.0%}"]
        for alloc in ("global", "uniform"):
            a, b = mag[("SGD", alloc, s)], mag[("SFW k-support", alloc, s)]
            row += [mean_std(a), mean_std(b), f"{(sum(b) / sum(a)):.2f}x"]
        rows.append(row)
    headers = ["sparsity"]
    for alloc in ("global", "uniform"):
        headers += [f"SGD ({alloc})", f"SFW k-sup ({alloc})", "SFW/SGD"]
    print(fmt_table(headers, rows))
    if args.extras:
        print("\nStructured: conv filters removed by L2 norm, no retraining:")
        rows = [
            [
                f"{s:.0%}",
                mean_std(filt[("SGD", s)]),
                mean_std(filt[("SFW group k-support", s)]),
                f"{sum(filt[('SFW group k-support', s)]) / sum(filt[('SGD', s)]):.2f}x",
            ]
            for s in filter_levels
        ]
        print(fmt_table(["filters removed", "SGD", "SFW group k-sup", "SFW/SGD"], rows))
        print("\nLow rank: truncated SVD of the two wide convs (factorised), no retraining:")
        rows = [
            [
                f"{f:g}",
                f"{ratios[f]:.2f}",
                mean_std(rank[("SGD", f)]),
                mean_std(rank[("SFW spectral k-support", f)]),
                f"{sum(rank[('SFW spectral k-support', f)]) / sum(rank[('SGD', f)]):.2f}x",
            ]
            for f in rank_levels
        ]
        print(
            fmt_table(
                ["rank fraction", "params after/before", "SGD", "SFW spectral k-sup", "SFW/SGD"],
                rows,
            )
        )
    print(
        f"\n{args.seeds} seeds, {args.epochs} epochs, k={args.k_fraction}, group k={args.group_k}, "
        f"spectral k={args.spectral_k}, tau={args.tau}, SFW lr={args.sfw_lr}, "
        f"{time.time() - t_start:.0f}s total"
    )


if __name__ == "__main__":
    main()
