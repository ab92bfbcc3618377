"""Prune-retrain orderings that the literature predicts, measured on MNIST-1D and digits.

For each dataset and seed (model initialisation and data order; the data split is fixed):

1. IMP with weight rewinding (to iteration k = 5% of training) vs the same final mask with a
   random re-initialisation vs a random mask with the same layer-wise densities (from theta_k);
2. GMP (cubic, during training) vs one-shot at the end of 80% of the epochs + FT for the last 20%
   (equal total epochs);
3. retraining a one-shot-pruned dense model for a short budget with FT vs LLR vs ALLR (and CLR,
   SLR, LRW for context);
4. BIMP (linear-decay dense training, ALLR per phase) with at most a third of IMP's retraining
   iterations vs the IMP of (1).

Prints a markdown table (test top-1, mean +- std over seeds) and whether each ordering holds.

    PYTHONPATH=src python benchmarks/bench_prune_retrain.py              # a few minutes, 3 seeds
    PYTHONPATH=src python benchmarks/bench_prune_retrain.py --full       # 5 seeds, longer runs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from prunekit.data import DatasetBundle, create_dataset
from prunekit.models import create_model
from prunekit.recipes.context import iterations_per_epoch, original_schedule
from prunekit.training import (
    PruneSpec,
    TrainSpec,
    random_reinit,
    run_bimp,
    run_dense,
    run_gmp,
    run_imp,
    run_one_shot,
    run_sparse_training,
    shuffle_masks,
)
from prunekit.training.lr import LRW

RETRAIN = ["ft", "llr", "allr", "clr", "slr", "lrw"]


def dataset_setup(name: str, full: bool) -> tuple[DatasetBundle, Callable[[], nn.Module], int]:
    if name == "mnist1d":
        bundle = create_dataset("mnist1d", num_samples=10000 if full else 4000, seed=0)
        return (
            bundle,
            lambda: create_model("mlp", in_features=40, hidden=(256, 256)),
            30 if full else 20,
        )
    if name == "digits":
        bundle = create_dataset("digits", seed=0)
        return (
            bundle,
            lambda: create_model("mlp", in_features=64, hidden=(128, 128)),
            20 if full else 10,
        )
    raise ValueError(f"dataset: expected mnist1d or digits, got {name!r}")


def build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def run_seed(
    bundle: DatasetBundle,
    factory: Callable[[], nn.Module],
    epochs: int,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    out: dict[str, float] = {}
    train = TrainSpec(epochs=epochs, batch_size=64, lr=0.1, lr_schedule="step", seed=seed)
    prune = PruneSpec(sparsity=args.sparsity)
    original = original_schedule(train, bundle)
    k = int(round(0.05 * original.total))

    # 1. IMP with weight rewinding and its controls.
    imp = run_imp(
        build(factory, seed),
        bundle,
        train,
        prune,
        phases=args.phases,
        rewind="weights",
        rewind_iteration=k,
    )
    out["imp_rewind"] = imp.final["test_top1"]
    out["imp_sparsity"] = imp.phases[-1].sparsity
    imp_retrain = imp.retrain_iterations
    reinit = build(factory, seed)
    random_reinit(reinit, imp.masks, seed=seed + 10_000, factory=factory)
    out["same_mask_reinit"] = run_sparse_training(reinit, bundle, train, imp.masks)["test_top1"]
    rand_mask = shuffle_masks(imp.masks, seed=seed)
    out["random_mask"] = run_sparse_training(
        build(factory, seed),
        bundle,
        train,
        rand_mask,
        init_state=imp.rewind_state,
        schedule=LRW(original, original.total - k),
    )["test_top1"]

    # 2. GMP vs one-shot + FT at equal total epochs.
    out["gmp"] = run_gmp(build(factory, seed), bundle, train, prune).final["test_top1"]
    short = dataclasses.replace(train, epochs=0.8 * epochs)
    out["one_shot_ft"] = run_one_shot(
        build(factory, seed),
        bundle,
        short,
        prune,
        retrain_epochs=0.2 * epochs,
        retrain_schedule="ft",
    ).final["test_top1"]

    # 3. Retraining schedules at an equal short budget from the same dense model.
    dense = build(factory, seed)
    out["dense"] = run_dense(dense, bundle, train)["test_top1"]
    for name in RETRAIN:
        model = copy.deepcopy(dense)
        r = run_one_shot(
            model,
            bundle,
            train,
            PruneSpec(args.retrain_sparsity),
            retrain_epochs=args.retrain_epochs,
            retrain_schedule=name,
            pretrained=True,
        )
        out[f"retrain_{name}"] = r.final["test_top1"]
        out["pruned_no_retrain"] = r.phases[0].pruned["test_top1"]

    # 4. BIMP with at most a third of IMP's retraining iterations.
    ipe = iterations_per_epoch(len(bundle.train), train.batch_size)
    budget_epochs = (imp_retrain // 3) / ipe
    bimp = run_bimp(
        build(factory, seed), bundle, train, prune, phases=args.phases, retrain_epochs=budget_epochs
    )
    out["bimp"] = bimp.final["test_top1"]
    out["bimp_retrain_iters"] = bimp.retrain_iterations
    out["imp_retrain_iters"] = imp_retrain
    return out


def fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def report(
    name: str, results: list[dict[str, float]], args: argparse.Namespace, epochs: int
) -> list[str]:
    col = defaultdict(list)
    for r in results:
        for key, value in r.items():
            col[key].append(value)
    mean = {k: statistics.mean(v) for k, v in col.items()}
    s = args.sparsity
    lines = [
        f"\n### {name} ({len(results)} seeds, {epochs} epochs of dense training, test top-1 %)\n",
        "| comparison | variant | test top-1 (mean ± std) |",
        "| --- | --- | --- |",
        f"| reference | dense | {fmt(col['dense'])} |",
        f"| 1. IMP {s:.0%}, {args.phases} phases | IMP, weight rewinding to 5% | {fmt(col['imp_rewind'])} |",
        f"| | same mask, random re-init | {fmt(col['same_mask_reinit'])} |",
        f"| | random mask, same layer densities | {fmt(col['random_mask'])} |",
        f"| 2. {s:.0%} at equal epochs | GMP (cubic, 10%-60% of training) | {fmt(col['gmp'])} |",
        f"| | one-shot at 80% + FT 20% | {fmt(col['one_shot_ft'])} |",
        f"| 3. one-shot {args.retrain_sparsity:.0%}, retrain {args.retrain_epochs:g} epoch(s) | no retraining | {fmt(col['pruned_no_retrain'])} |",
    ]
    for sched in RETRAIN:
        lines.append(f"| | {sched.upper()} | {fmt(col[f'retrain_{sched}'])} |")
    lines += [
        f"| 4. {s:.0%}, {args.phases} phases | IMP (retrain {int(mean['imp_retrain_iters'])} it.) | {fmt(col['imp_rewind'])} |",
        f"| | BIMP (retrain {int(mean['bimp_retrain_iters'])} it., ALLR) | {fmt(col['bimp'])} |",
        "",
        "| predicted ordering | holds (means)? |",
        "| --- | --- |",
    ]
    checks = [
        ("IMP rewinding ≥ same-mask re-init", mean["imp_rewind"] >= mean["same_mask_reinit"]),
        ("same-mask re-init ≥ random mask", mean["same_mask_reinit"] >= mean["random_mask"]),
        ("GMP ≥ one-shot + FT (equal epochs)", mean["gmp"] >= mean["one_shot_ft"]),
        ("LLR > FT (short budget)", mean["retrain_llr"] > mean["retrain_ft"]),
        ("ALLR > FT (short budget)", mean["retrain_allr"] > mean["retrain_ft"]),
        (
            "BIMP (≤ 1/3 retraining) reaches IMP (within 1 point)",
            mean["bimp"] >= mean["imp_rewind"] - 0.01,
        ),
    ]
    lines += [f"| {label} | {'yes' if ok else '**no**'} |" for label, ok in checks]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist1d,digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--retrain-sparsity", type=float, default=0.9)
    parser.add_argument("--retrain-epochs", type=float, default=1.0)
    parser.add_argument("--full", action="store_true", help="5 seeds, more data and epochs")
    parser.add_argument("--json", help="also write the raw per-seed numbers here")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if args.full:
        args.seeds = max(args.seeds, 5)
    torch.set_num_threads(args.threads)  # small MLPs: one thread is fastest on a shared CPU
    start = time.time()
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    raw = {}
    for name in args.datasets.split(","):
        bundle, factory, epochs = dataset_setup(name, args.full)
        results = []
        for seed in range(args.seeds):
            t = time.time()
            results.append(run_seed(bundle, factory, epochs, seed, args))
            print(f"[{name} seed {seed}: {time.time() - t:.0f}s]", flush=True)
        raw[name] = results
        lines += report(name, results, args, epochs)
    lines.append(f"\nwall time {time.time() - start:.0f}s")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)


if __name__ == "__main__":
    main()
