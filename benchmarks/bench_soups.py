"""Sparse Model Soups on MNIST-1D: uniform and greedy soups vs the best ingredient vs an ensemble.

Per seed: train a small BatchNorm CNN densely, then run one soup phase per target sparsity
(default 90% then 95%, the second phase pruning the first phase's soup, as in the paper): prune
by global magnitude, retrain m ingredients with the mask fixed (varying the batch-order seed),
merge by uniform and greedy soup (greedy chosen on a held-out validation split), recalibrate
BatchNorm on 20% of the training set, and measure test accuracy of every ingredient, both soups
and the averaged-softmax ensemble of the m ingredients. The soup's sparsity is checked against
the mask's.

    python benchmarks/bench_soups.py                 # 3 seeds, m=4, a few minutes on 2 cores
    python benchmarks/bench_soups.py --seeds 5 --m 6 --dense-epochs 40 --retrain-epochs 15
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

import prunekit  # noqa: E402
from prunekit.training.soups import ingredient_variants, run_soup_phase  # noqa: E402

DATA: dict = {}


def retrain(model: nn.Module, masks: prunekit.MaskSet, variant: dict) -> dict:
    """Retrain with the mask fixed: SGD, linear warm-up + decay, the variant's seed / decay."""
    opt = torch.optim.SGD(
        model.parameters(), lr=variant["lr"], momentum=0.9, weight_decay=variant["weight_decay"]
    )
    steps = variant["epochs"] * len(batches(*DATA["train"], 128))
    with masks.attach(opt, model):
        train(
            model,
            opt,
            DATA["train"],
            variant["epochs"],
            seed=variant["seed"],
            lr_fn=linear_lr(variant["lr"], steps),
        )
    return model.state_dict()


def run(args: argparse.Namespace) -> list[dict]:
    DATA.update(mnist1d_splits(seed=0))
    val = batches(*DATA["val"], 500)
    n_bn = max(1, int(0.2 * len(DATA["train"][0])) // 128)
    records = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = BNCNN(channels=args.channels)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        steps = args.dense_epochs * len(batches(*DATA["train"], 128))
        t0 = time.time()
        train(model, opt, DATA["train"], args.dense_epochs, seed=seed, lr_fn=linear_lr(0.1, steps))
        dense_acc = accuracy(model, DATA["test"])
        print(f"seed {seed}: dense test acc {dense_acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
        masks = None
        for sparsity in args.sparsities:
            masks = prunekit.prune(model, sparsity, masks=masks)
            base = {
                "seed": 100 * seed,
                "epochs": args.retrain_epochs,
                "lr": args.retrain_lr,
                "weight_decay": 5e-4,
            }
            variants = ingredient_variants(base, args.vary, args.m)
            bn_data = batches(*DATA["train"], 128, seed=seed)[:n_bn]
            t0 = time.time()
            res = run_soup_phase(
                model, masks, retrain, variants, val, bn_data=bn_data, select="best"
            )
            members = []
            for sd in res.ingredient_state_dicts:
                member = copy.deepcopy(model)
                member.load_state_dict(sd)
                members.append(member)
            ing_test = [accuracy(m, DATA["test"]) for m in members]
            best_by_val = max(range(args.m), key=lambda i: res.ingredient_accuracy[i])
            soups = {}
            for name, sd in (
                ("uniform", res.uniform_state_dict),
                ("greedy", res.greedy_state_dict),
            ):
                probe = copy.deepcopy(model)
                probe.load_state_dict(sd)
                soups[name] = accuracy(probe, DATA["test"])
            ens = prunekit.training.soups.prediction_ensemble(members, [DATA["test"]])
            rec = {
                "seed": seed,
                "sparsity": sparsity,
                "dense": dense_acc,
                "mask_sparsity": res.mask_sparsity,
                "soup_sparsity": res.soup_sparsity,
                "ingredients": ing_test,
                "best_ingredient_val": ing_test[best_by_val],
                "best_ingredient_oracle": max(ing_test),
                "mean_ingredient": sum(ing_test) / len(ing_test),
                "uniform": soups["uniform"],
                "greedy": soups["greedy"],
                "greedy_size": len(res.greedy_ingredients),
                "ensemble": ens,
                "selected": res.selected,
            }
            records.append(rec)
            print(
                f"  {sparsity:.0%}: ingredients {[round(a, 4) for a in ing_test]} | uniform "
                f"{soups['uniform']:.4f} greedy {soups['greedy']:.4f} "
                f"({len(res.greedy_ingredients)}/{args.m}) ensemble {ens:.4f} | soup sparsity "
                f"{res.soup_sparsity['uniform']:.4f} mask {res.mask_sparsity:.4f} "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
    return records


def report(records: list[dict], args: argparse.Namespace) -> str:
    rows = []
    for s in args.sparsities:
        rs = [r for r in records if r["sparsity"] == s]

        def col(key, rs=rs):
            return mean_std([r[key] for r in rs])

        gap_u = [r["uniform"] - r["best_ingredient_val"] for r in rs]
        gap_g = [r["greedy"] - r["best_ingredient_val"] for r in rs]
        same = all(
            abs(r["soup_sparsity"]["uniform"] - r["mask_sparsity"]) < 1e-12
            and abs(r["soup_sparsity"]["greedy"] - r["mask_sparsity"]) < 1e-12
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
                f"{sum(g >= 0 for g in gap_u)}/{len(rs)}, {sum(g >= 0 for g in gap_g)}/{len(rs)}",
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
        "seeds soup ≥ best (u, g)",
        "soup sparsity = mask",
    ]
    dense = mean_std([r["dense"] for r in records if r["sparsity"] == args.sparsities[0]])
    return fmt_table(headers, rows) + f"\n\nDense test accuracy: {dense}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--m", type=int, default=4, help="ingredients per phase")
    parser.add_argument("--vary", default="seed", choices=["seed", "weight_decay", "length"])
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--retrain-epochs", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--retrain-lr", type=float, default=0.05)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    records = run(args)
    print()
    print(report(records, args))
    print(
        f"\n{args.seeds} seeds, m={args.m}, vary={args.vary}, channels={args.channels}, "
        f"retrain lr={args.retrain_lr}, {time.time() - t0:.0f}s total"
    )


if __name__ == "__main__":
    main()
