"""Compression-aware SFW through the Trainer-backed recipe (``prunekit.training.run_sfw``).

The main table of ``bench_sfw.py`` (MNIST-1D, BatchNorm CNN with 32 channels, global magnitude
pruning without retraining), run end to end by the recipe: per seed the same model is trained by
``run_sfw(..., sfw=None)`` (the baseline: SGD, momentum 0.9, weight decay 5e-4, linear decay) and
by ``run_sfw(..., SFWSpec("k_support", k_fraction, tau))`` (same epochs and LR shape, peak
``--sfw-lr``), then each is pruned at every sparsity with only the BatchNorm statistics
recomputed (6 training batches). With ``--retrain-epochs N`` both are also retrained (LLR).

    python benchmarks/bench_sfw_recipe.py                    # 3 seeds, 20 epochs
    python benchmarks/bench_sfw_recipe.py --seeds 5 --epochs 40 --retrain-epochs 2
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
from prunekit.training import SFWSpec, TrainSpec, run_sfw  # noqa: E402


def bundle() -> DatasetBundle:
    splits = mnist1d_splits(seed=0)
    parts = {k: TensorData(*v) for k, v in splits.items()}
    return DatasetBundle("mnist1d", parts["train"], parts["val"], parts["test"], 10, (40,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--sfw-lr", type=float, default=1.0)
    parser.add_argument("--k-fraction", type=float, default=0.05)
    parser.add_argument("--tau", type=float, default=10.0)
    parser.add_argument("--retrain-epochs", type=float, default=0.0)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = bundle()
    t_all = time.time()
    runs: dict[str, list] = {"sgd": [], "sfw": []}
    for seed in range(args.seeds):
        train = TrainSpec(
            epochs=args.epochs, batch_size=128, lr=0.1, lr_schedule="linear", seed=seed
        )
        for name in ("sgd", "sfw"):
            spec = (
                SFWSpec("k_support", k_fraction=args.k_fraction, tau=args.tau, lr=args.sfw_lr)
                if name == "sfw"
                else None
            )
            torch.manual_seed(seed)
            t0 = time.time()
            result = run_sfw(
                BNCNN(channels=32),
                data,
                train,
                spec,
                compress="magnitude",
                levels=args.sparsities,
                retrain_epochs=args.retrain_epochs,
                bn_batches=6,
            )
            runs[name].append(result)
            pruned = [round(p.pruned["test_top1"], 4) for p in result.phases]
            print(
                f"seed {seed} {name}: dense {result.dense['test_top1']:.4f}, pruned {pruned}, "
                f"max norm/radius {result.config['max_norm_ratio']} ({time.time() - t0:.0f}s)",
                flush=True,
            )

    def col(name: str, i: int | None, key: str = "pruned") -> list[float]:
        if i is None:
            return [r.dense["test_top1"] for r in runs[name]]
        return [getattr(r.phases[i], key)["test_top1"] for r in runs[name]]

    def ratio(a: list[float], b: list[float]) -> str:
        return f"{sum(a) / max(sum(b), 1e-12):.2f}x"

    rows = [["0%", mean_std(col("sgd", None)), mean_std(col("sfw", None))]]
    rows[0].append(ratio(col("sfw", None), col("sgd", None)))
    for i, s in enumerate(args.sparsities):
        sgd, sfw = col("sgd", i), col("sfw", i)
        row = [f"{s:.0%}", mean_std(sgd), mean_std(sfw), ratio(sfw, sgd)]
        rows.append(row)
    headers = ["sparsity", "SGD, no retraining", "SFW k-sup, no retraining", "SFW/SGD"]
    if args.retrain_epochs > 0:
        headers += ["SGD retrained", "SFW retrained"]
        rows[0] += ["", ""]
        for i in range(len(args.sparsities)):
            rows[i + 1] += [
                mean_std(col("sgd", i, "retrained")),
                mean_std(col("sfw", i, "retrained")),
            ]
    print()
    print(fmt_table(headers, rows))
    worst = max(r.config["max_norm_ratio"] for r in runs["sfw"])
    print(f"\nlargest norm / radius seen during SFW training: {worst:.4f}")
    print(f"{time.time() - t_all:.0f}s total; torch {torch.__version__}")


if __name__ == "__main__":
    main()
