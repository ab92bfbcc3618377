"""Data pruning: test accuracy vs kept fraction for random, EL2N, GraNd, forgetting and
prototypes (hard / easy), each with and without KD from the full-data model; score cost.

For every data set and seed: train the model on all the data (the teacher and the full-data
baseline; its time per epoch is the cost unit), compute every score once, then train a fresh
model (the same initialisation) on each kept subset for the same number of epochs (equal-epoch
budget, ``--budget iterations`` for equal steps). Prints mean ± std over seeds per cell, the
score cost relative to one training epoch, and checks the four literature predictions::

    python benchmarks/bench_data_pruning.py                      # MNIST-1D + digits, 3 seeds
    python benchmarks/bench_data_pruning.py --datasets digits --seeds 1 --epochs 5   # quick
    python benchmarks/bench_data_pruning.py --cifar-path /data/cifar-10-batches-py --datasets cifar10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from prunekit.data import create_dataset  # noqa: E402
from prunekit.data_pruning import (  # noqa: E402
    DistillTrainer,
    IndexView,
    ScoreContext,
    compute_scores,
    select,
    subset_iterations,
)
from prunekit.models import create_model  # noqa: E402
from prunekit.recipes.spec import TrainSpec  # noqa: E402
from prunekit.training import Trainer  # noqa: E402
from prunekit.training.lr import make_lr_schedule  # noqa: E402
from prunekit.training.trainer import evaluate, make_optimizer  # noqa: E402

SCORES = ("el2n", "grand", "forgetting", "prototypes")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"])
    p.add_argument("--cifar-path", help="local CIFAR-10 python batches (enables cifar10)")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.9, 0.7, 0.5, 0.3, 0.1])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=float, default=15.0, help="full-data and subset epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="MLP widths")
    p.add_argument("--mnist1d-samples", type=int, default=4000)
    p.add_argument("--score-runs", type=int, default=2, help="runs of EL2N and GraNd")
    p.add_argument("--el2n-epochs", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5, help="KD weight")
    p.add_argument("--tau", type=float, default=4.0, help="KD temperature")
    p.add_argument("--budget", choices=["epochs", "iterations"], default="epochs")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def load(name: str, args: argparse.Namespace):
    if name == "mnist1d":
        return create_dataset("mnist1d", num_samples=args.mnist1d_samples)
    if name == "cifar10":
        if not args.cifar_path:
            raise SystemExit("cifar10 needs --cifar-path (a local copy of the python batches)")
        return create_dataset("cifar10", path=args.cifar_path)
    return create_dataset(name)


def build(name: str, data, args: argparse.Namespace, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "cifar10":
        return create_model("resnet20", num_classes=data.num_classes)
    features = 1
    for s in data.input_shape:
        features *= s
    return create_model("mlp", in_features=features, hidden=args.hidden,
                        num_classes=data.num_classes)  # fmt: skip


def train(model, train_data, data, args, its, seed, teacher=None) -> float:
    """Train ``its`` steps (cosine LR); return the wall time."""
    opt = make_optimizer(model, "sgd", args.lr, 0.9, 5e-4)
    common = dict(optimizer=opt, lr_schedule=make_lr_schedule("cosine", args.lr, its),
                  iterations=its, batch_size=args.batch_size, augment=data.augment,
                  device="cpu", seed=seed)  # fmt: skip
    start = time.perf_counter()
    if teacher is None:
        Trainer(model, train_data, **common).fit()
    else:
        DistillTrainer(model, train_data, teacher=teacher, alpha=args.alpha, tau=args.tau,
                       **common).fit()  # fmt: skip
    return time.perf_counter() - start


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    data = load(name, args)
    n = len(data.train)
    per_epoch = max(1, -(-n // args.batch_size))
    full_its = int(round(args.epochs * per_epoch))
    acc: dict[tuple[str, bool, float], list[float]] = {}
    dense_acc, cost = [], {s: [] for s in (*SCORES, "random")}
    for seed in range(args.seeds):
        teacher = build(name, data, args, seed)
        dense_s = train(teacher, data.train, data, args, full_its, seed)
        epoch_s = dense_s / args.epochs
        dense_acc.append(evaluate(teacher, data.test)["top1"])
        spec = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         lr_schedule="cosine", device="cpu")  # fmt: skip
        ctx = ScoreContext(data=data.train, num_classes=data.num_classes,
                           make_model=lambda s: build(name, data, args, s), model=teacher,
                           train=spec, seed=seed, augment=data.augment)  # fmt: skip
        options = {"el2n": {"runs": args.score_runs, "epochs": args.el2n_epochs},
                   "grand": {"runs": args.score_runs}, "forgetting": {},
                   "prototypes": {}, "random": {}}  # fmt: skip
        scores = {}
        for score, opts in options.items():
            start = time.perf_counter()
            scores[score] = compute_scores(score, ctx, **opts)
            cost[score].append((time.perf_counter() - start) / epoch_s)
        for fraction in args.fractions:
            arms = [("random", "hard")] + [(s, k) for s in SCORES for k in ("hard", "easy")]
            for score, keep in arms:
                kept = select(scores[score], fraction, keep).indices
                its = subset_iterations(args.budget, len(kept), n, args.batch_size, args.epochs)
                label = score if score == "random" else f"{score}-{keep}"
                for kd in (False, True):
                    model = build(name, data, args, seed)
                    train(model, IndexView(data.train, kept), data, args, its, seed,
                          teacher if kd else None)  # fmt: skip
                    top1 = evaluate(model, data.test)["top1"]
                    acc.setdefault((label, kd, fraction), []).append(top1)
        print(f"  {name} seed {seed} done ({time.strftime('%H:%M:%S')})", flush=True)
    return {"acc": acc, "dense": dense_acc, "cost": cost, "n": n, "its": full_its}


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def fmt(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * mean(xs):.1f} ± {100 * sd:.1f}"


def report(name: str, res: dict, args: argparse.Namespace) -> None:
    acc, fr = res["acc"], args.fractions
    print(f"\n### {name}: {res['n']} training examples, full-data model "
          f"{fmt(res['dense'])} % test top-1 ({res['its']} iterations)\n")  # fmt: skip
    print("| score | KD | " + " | ".join(f"{f:.0%}" for f in fr) + " |")
    print("|---|---|" + "---|" * len(fr))
    labels = ["random"] + [f"{s}-{k}" for s in SCORES for k in ("hard", "easy")]
    for kd in (False, True):
        for label in labels:
            cells = " | ".join(fmt(acc[(label, kd, f)]) for f in fr)
            print(f"| {label} | {'yes' if kd else 'no'} | {cells} |")
    print("\nscore cost relative to one training epoch of the full data (mean over seeds): "
          + ", ".join(f"{s} {mean(c):.2f}x" for s, c in res["cost"].items()))  # fmt: skip
    m = {k: mean(v) for k, v in acc.items()}
    large = [f for f in fr if f >= 0.7]
    small = [f for f in fr if f <= 0.3]
    print("\npredictions (means over seeds, test top-1 points):")
    for s in ("el2n", "forgetting"):
        d = [100 * (m[(f"{s}-hard", False, f)] - m[("random", False, f)]) for f in large]
        print(f"  (1) {s}-hard - random at {large}: {[round(x, 1) for x in d]}")
    for s in SCORES:
        d = [100 * (m[(f"{s}-easy", False, f)] - m[(f"{s}-hard", False, f)]) for f in small]
        print(f"  (2) {s}: easy - hard at {small}: {[round(x, 1) for x in d]}")
    for f in fr:
        best = max(m[(lab, True, f)] for lab in labels)
        print(f"  (3) KD at {f:.0%}: best score - random = "
              f"{100 * (best - m[('random', True, f)]):.1f}")  # fmt: skip
    for lab in labels:
        d = [100 * (m[(lab, True, f)] - m[(lab, False, f)]) for f in small]
        print(f"  (3) KD gain of {lab} at {small}: {[round(x, 1) for x in d]}")
    for f in fr:
        keep = "hard" if f >= 0.5 else "easy"
        d = 100 * (m[(f"prototypes-{keep}", False, f)] - m[(f"el2n-{keep}", False, f)])
        print(f"  (4) prototypes - el2n ({keep}) at {f:.0%}: {d:.1f}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; epochs {args.epochs}, batch {args.batch_size}, "
          f"seeds {args.seeds}, budget {args.budget}, KD alpha {args.alpha} tau {args.tau}")  # fmt: skip
    start = time.perf_counter()
    for name in args.datasets:
        report(name, run_dataset(name, args), args)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
