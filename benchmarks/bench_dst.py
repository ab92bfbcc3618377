"""Dynamic sparse training: RigL and GraNet vs GMP (and a static ERK mask) at equal epochs.

Every run trains the same MLP for the same number of epochs with Adam and a cosine LR:

* dense: no pruning;
* GMP: dense start, global magnitude pruning on the cubic schedule from 10% to 60% of training;
* GraNet: the same GMP schedule plus drop-and-regrow (r_0 = 0.5, cosine) until 75% of training;
* RigL: sparse from the start (random ERK mask), drop-and-regrow (alpha = 0.3) until 75%;
* static: the same random ERK mask, never updated (the baseline RigL must beat).

    python benchmarks/bench_dst.py                    # 3 seeds, 90% and 95%, a few minutes
    python benchmarks/bench_dst.py --epochs 100 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _criteria_common import load_data, mean_std, setup_threads, train  # noqa: E402

import prunekit  # noqa: E402
from prunekit.training.sparse_training import GraNet, RigL, gmp_sparsity  # noqa: E402

METHODS = ["GMP", "GraNet", "RigL", "static ERK"]


def build(data, hidden, seed):
    torch.manual_seed(seed)
    return prunekit.create_model(
        "mlp", in_features=data.in_features, hidden=hidden, num_classes=data.num_classes
    )


def run(method, data, hidden, sparsity, seed, epochs, lr, delta_t, batch_size=128):
    model = build(data, hidden, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total = epochs * ((len(data.y) + batch_size - 1) // batch_size)
    t_start, t_prune_end, t_end = int(0.1 * total), int(0.6 * total), int(0.75 * total)
    if method == "dense":
        return train(model, data, epochs=epochs, seed=seed, optimizer=optimizer), 0.0
    if method == "GMP":
        state = {"masks": prunekit.compute_masks(model, 0.0)}

        def after(step):
            on_grid = step >= t_start and (step - t_start) % delta_t == 0
            if (on_grid and step <= t_prune_end) or step == t_prune_end:
                s = gmp_sparsity(step, 0.0, sparsity, t_start, t_prune_end)
                state["masks"] = prunekit.prune(model, s, masks=state["masks"])
            state["masks"].enforce(model, optimizer)

        acc = train(model, data, epochs=epochs, seed=seed, optimizer=optimizer, after_step=after)
        return acc, state["masks"].sparsity
    if method == "GraNet":
        dst = GraNet(
            model,
            optimizer,
            final_sparsity=sparsity,
            t_start=t_start,
            t_prune_end=t_prune_end,
            t_end=t_end,
            delta_t=delta_t,
        )
    elif method == "RigL":
        dst = RigL(model, optimizer, sparsity=sparsity, t_end=t_end, delta_t=delta_t, seed=seed)
    elif method == "static ERK":
        masks = prunekit.prune(model, sparsity, method="random", allocation="erk", seed=seed)
        acc = train(model, data, epochs=epochs, seed=seed, optimizer=optimizer, masks=masks)
        return acc, masks.sparsity
    else:
        raise ValueError(method)
    acc = train(
        model, data, epochs=epochs, seed=seed, optimizer=optimizer, before_step=lambda _: dst.step()
    )
    dst.remove()
    nonzero = sum(int((p != 0).sum()) for p in dst.params.values())
    assert nonzero <= dst.masks.numel - dst.masks.num_pruned
    return acc, dst.masks.sparsity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist1d", choices=["mnist1d", "digits"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--delta-t", type=int, default=40, help="steps between mask updates")
    parser.add_argument("--hidden", default="300,300")
    parser.add_argument("--sparsities", default="0.9,0.95")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    sparsities = [float(s) for s in args.sparsities.split(",")]
    data = load_data(args.data)
    seeds = list(range(args.seeds))
    common = dict(data=data, hidden=hidden, epochs=args.epochs, lr=args.lr, delta_t=args.delta_t)
    dense = [run("dense", sparsity=0.0, seed=s, **common)[0] for s in seeds]
    results = {
        (m, s): [run(m, sparsity=s, seed=seed, **common) for seed in seeds]
        for s in sparsities
        for m in METHODS
    }
    print(
        f"data={data.name}  MLP {data.in_features}-{'-'.join(map(str, hidden))}-"
        f"{data.num_classes}  epochs={args.epochs}  seeds={args.seeds}  delta_t={args.delta_t}"
    )
    print(f"dense accuracy: {mean_std(dense)}\n")
    print("| sparsity | method | test accuracy | vs GMP | final sparsity |")
    print("| --- | --- | --- | --- | --- |")
    for s in sparsities:
        gmp = statistics.mean(a for a, _ in results[("GMP", s)])
        for m in METHODS:
            accs = [a for a, _ in results[(m, s)]]
            final = statistics.mean(f for _, f in results[(m, s)])
            ratio = statistics.mean(accs) / gmp
            print(f"| {s:.0%} | {m} | {mean_std(accs)} | {ratio:.3f} | {final:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
