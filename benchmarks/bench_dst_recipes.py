"""Recipe-level runs through the training engine: RigL, GraNet, pruning at init vs GMP.

Every method trains the same MLP on digits for the same number of epochs with the same
TrainSpec (SGD, momentum 0.9, cosine LR); GMP (`run_gmp`, cubic schedule from 10% to 60% of
training) is the baseline of the accuracy ratio. Then the cost of the Trainer integration:
seconds per step of `Trainer` + `RigLCallback` vs a hand-written loop calling `RigL.step()`.

    python benchmarks/bench_dst_recipes.py                 # 3 seeds, 90% and 95%, ~2-4 minutes
    python benchmarks/bench_dst_recipes.py --epochs 60 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

import prunekit  # noqa: E402
from prunekit.data import create_dataset  # noqa: E402
from prunekit.training import (  # noqa: E402
    ConstantLR,
    PruneSpec,
    RigLCallback,
    Trainer,
    TrainSpec,
    make_optimizer,
    run_at_init,
    run_gmp,
    run_granet,
    run_rigl,
)
from prunekit.training.sparse_training import RigL  # noqa: E402


def mlp(hidden, seed):
    torch.manual_seed(seed)
    return prunekit.create_model("mlp", in_features=64, hidden=hidden, num_classes=10)


def run(method, data, train, hidden, sparsity, delta_t):
    model = mlp(hidden, train.seed)
    if method == "GMP":
        result = run_gmp(model, data, train, PruneSpec(sparsity))
    elif method == "GraNet":
        result = run_granet(
            model,
            data,
            train,
            sparsity=sparsity,
            delta_t=delta_t,
            start_fraction=0.1,
            prune_end_fraction=0.6,
        )
    elif method == "RigL":
        result = run_rigl(model, data, train, sparsity=sparsity, delta_t=delta_t)
    else:  # "<criterion> at init"
        result = run_at_init(
            model,
            data,
            train,
            method.split()[0],
            sparsity,
            criterion_options={"rounds": 100} if method.startswith("synflow") else None,
        )
    return result.final["test_top1"], result.masks.sparsity


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def step_times(data, hidden, iterations, repeats=3):
    """Median seconds per step: Trainer + RigLCallback vs a hand loop with RigL.step()."""
    x_all, y_all = data.train.x, data.train.y

    def trainer_run():
        model = mlp(hidden, 0)
        cb = RigLCallback(0.9, delta_t=20)
        Trainer(
            model,
            data.train,
            optimizer=make_optimizer(model, lr=0.05),
            lr_schedule=ConstantLR(0.05, iterations),
            batch_size=64,
            callbacks=[cb],
        ).fit()

    def hand_run():
        model = mlp(hidden, 0)
        opt = make_optimizer(model, lr=0.05)
        rigl = RigL(model, opt, sparsity=0.9, t_end=int(0.75 * iterations), delta_t=20)
        g = torch.Generator().manual_seed(0)
        for _ in range(iterations):
            idx = torch.randint(0, len(y_all), (64,), generator=g)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            if rigl.step():
                opt.step()

    out = {}
    for name, fn in (
        ("hand loop + RigL.step()", hand_run),
        ("Trainer + RigLCallback", trainer_run),
    ):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) / iterations
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--delta-t", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = create_dataset("digits", seed=0)
    hidden = tuple(args.hidden)
    methods = ["GMP", "GraNet", "RigL", "snip at init", "synflow at init", "random at init"]
    print(
        f"data=digits  MLP 64-{'-'.join(map(str, hidden))}-10  epochs={args.epochs}  "
        f"seeds={args.seeds}  delta_t={args.delta_t}  SGD lr 0.05 cosine  ({machine()})\n"
    )
    print("| sparsity | method | test accuracy | vs GMP | final sparsity |")
    print("| --- | --- | --- | --- | --- |")
    for sparsity in args.sparsities:
        means = {}
        for method in methods:
            accs, final = [], 0.0
            for seed in range(args.seeds):
                train = TrainSpec(
                    epochs=args.epochs, batch_size=64, lr=0.05, lr_schedule="cosine", seed=seed
                )
                acc, final = run(method, data, train, hidden, sparsity, args.delta_t)
                accs.append(acc)
            mean, std = mean_std(accs)
            means[method] = mean
            print(
                f"| {sparsity:.0%} | {method} | {mean:.3f} ± {std:.3f} | "
                f"{mean / means['GMP']:.3f} | {final:.4f} |",
                flush=True,
            )
    print("\n| loop | ms per step | vs hand loop |")
    print("| --- | --- | --- |")
    times = step_times(data, hidden, iterations=300)
    base = times["hand loop + RigL.step()"]
    for name, seconds in times.items():
        print(f"| {name} | {1000 * seconds:.3f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
