"""Sparse Model Soups through the Trainer-backed recipe (``prunekit.training.run_soups``).

The same experiment as ``bench_soups.py`` (MNIST-1D, BatchNorm CNN, phases at 90% then 95%, m
ingredients per phase differing in batch order, soups vs the best ingredient vs the ensemble),
but every step runs through the recipe: Trainer dense training (linear decay), global magnitude
pruning of the previous soup, LLR retraining with the mask fixed, uniform and greedy soups with
BatchNorm recalibrated on 20% of the training set, the better soup (on validation) carried on.

    python benchmarks/bench_soups_recipe.py                   # 3 seeds, m=4
    python benchmarks/bench_soups_recipe.py --seeds 5 --m 6 --dense-epochs 40 --retrain-epochs 15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sfw_soups_common import BNCNN, fmt_table, mean_std, mnist1d_splits  # noqa: E402

from prunekit.data import DatasetBundle, TensorData  # noqa: E402
from prunekit.training import PruneSpec, TrainSpec, run_soups  # noqa: E402


def bundle() -> DatasetBundle:
    splits = mnist1d_splits(seed=0)
    parts = {k: TensorData(*v) for k, v in splits.items()}
    return DatasetBundle("mnist1d", parts["train"], parts["val"], parts["test"], 10, (40,))


def run(args: argparse.Namespace) -> list[dict]:
    data = bundle()
    records = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = BNCNN(channels=args.channels)
        train = TrainSpec(
            epochs=args.dense_epochs,
            batch_size=128,
            lr=0.1,
            lr_schedule="linear",
            momentum=0.9,
            weight_decay=5e-4,
            seed=seed,
        )
        t0 = time.time()
        result = run_soups(
            model,
            data,
            train,
            PruneSpec(sparsity=args.sparsities[-1]),
            sparsities=args.sparsities,
            m=args.m,
            vary=args.vary,
            retrain_epochs=args.retrain_epochs,
            retrain_schedule="llr",
            retrain_lr=args.retrain_lr,
            merge="best",
            workers=args.workers,
        )
        print(
            f"seed {seed}: dense test acc {result.dense['test_top1']:.4f} "
            f"({time.time() - t0:.0f}s in all)",
            flush=True,
        )
        for phase in result.phases:
            ing = [i["test_top1"] for i in phase.ingredients]
            best = max(range(len(ing)), key=lambda i: phase.ingredients[i]["val_top1"])
            rec = {
                "seed": seed,
                "sparsity": phase.target_sparsity,
                "dense": result.dense["test_top1"],
                "mask_sparsity": phase.sparsity,
                "soup_sparsity": phase.soup_sparsity,
                "mean_ingredient": sum(ing) / len(ing),
                "best_ingredient_val": ing[best],
                "uniform": phase.uniform["test_top1"],
                "greedy": phase.greedy["test_top1"],
                "greedy_size": len(phase.greedy["ingredients"]),
                "ensemble": phase.ensemble["test_top1"],
            }
            records.append(rec)
            print(
                f"  {phase.target_sparsity:.0%}: ingredients {[round(a, 4) for a in ing]} | "
                f"uniform {rec['uniform']:.4f} greedy {rec['greedy']:.4f} "
                f"({rec['greedy_size']}/{args.m}) ensemble {rec['ensemble']:.4f} | soup "
                f"sparsity {phase.soup_sparsity['uniform']:.4f} mask {phase.sparsity:.4f}",
                flush=True,
            )
    return records


def report(records: list[dict], args: argparse.Namespace) -> str:
    rows = []
    for s in args.sparsities:
        rs = [r for r in records if abs(r["sparsity"] - s) < 1e-12]

        def col(key, rs=rs):
            return mean_std([r[key] for r in rs])

        gap_u = [r["uniform"] - r["best_ingredient_val"] for r in rs]
        gap_g = [r["greedy"] - r["best_ingredient_val"] for r in rs]
        gap_e = [r["ensemble"] - r["best_ingredient_val"] for r in rs]
        same = all(
            r["soup_sparsity"]["uniform"] == r["mask_sparsity"]
            and r["soup_sparsity"]["greedy"] == r["mask_sparsity"]
            for r in rs
        )
        rows.append(
            [
                f"{s:.0%}",
                col("mean_ingredient"),
                col("best_ingredient_val"),
                col("uniform"),
                col("greedy"),
                col("ensemble"),
                f"{100 * sum(gap_u) / len(gap_u):+.2f}",
                f"{100 * sum(gap_g) / len(gap_g):+.2f}",
                f"{100 * sum(gap_e) / len(gap_e):+.2f}",
                "yes" if same else "NO",
            ]
        )
    headers = [
        "sparsity",
        "mean ingredient",
        "best ingredient (val)",
        "uniform soup",
        "greedy soup",
        "ensemble (m models)",
        "uniform − best",
        "greedy − best",
        "ensemble − best",
        "soup sparsity = mask",
    ]
    dense = mean_std(
        [r["dense"] for r in records if abs(r["sparsity"] - args.sparsities[0]) < 1e-12]
    )
    return fmt_table(headers, rows) + f"\n\nDense test accuracy: {dense}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--m", type=int, default=4, help="ingredients per phase")
    parser.add_argument(
        "--vary", default="seed", choices=["seed", "weight_decay", "length", "lr_schedule"]
    )
    parser.add_argument("--dense-epochs", type=float, default=20)
    parser.add_argument("--retrain-epochs", type=float, default=8)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--retrain-lr", type=float, default=0.05)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    records = run(args)
    print()
    print(report(records, args))
    print(f"\n{time.time() - t0:.0f}s total; torch {torch.__version__}")


if __name__ == "__main__":
    main()
