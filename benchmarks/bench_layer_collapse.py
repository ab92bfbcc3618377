"""Layer collapse at initialisation: SynFlow vs SNIP, GraSP, global magnitude and random.

An MLP with unequal layer sizes is pruned at initialisation (global allocation) over a grid of
compression ratios 10^x. For each criterion and seed we record the highest compression at which
the network is still connected (some path of non-zero weights from an input to an output),
the per-layer densities it chose, and the test accuracy after training the sparse network.
Tanaka et al. (2020) predict that SynFlow stays connected furthest.

    python benchmarks/bench_layer_collapse.py                # 3 seeds, a few minutes on 2 cores
    python benchmarks/bench_layer_collapse.py --seeds 5 --epochs 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _criteria_common import (  # noqa: E402
    Timer,
    calibration,
    load_data,
    mean_std,
    setup_threads,
    train,
)

import prunekit  # noqa: E402
from prunekit.core.at_init import prune_at_init  # noqa: E402

METHODS = ["synflow", "snip", "grasp", "magnitude", "random"]


def build(in_features: int, num_classes: int, hidden: tuple[int, ...], seed: int):
    torch.manual_seed(seed)
    return prunekit.create_model(
        "mlp", in_features=in_features, hidden=hidden, num_classes=num_classes
    )


def connected(masks: prunekit.MaskSet) -> bool:
    """True when some input reaches some output through kept weights (layers in order)."""
    reach = None
    for mask in masks.values():
        m = mask.float()  # (out, in)
        reach = torch.ones(m.shape[1]) if reach is None else reach
        reach = (m @ reach > 0).float()
    return bool(reach is not None and reach.any())


def masks_for(method, data, hidden, seed, compression, rounds):
    model = build(data.in_features, data.num_classes, hidden, seed)
    sparsity = 1.0 - 1.0 / compression
    options = {"rounds": rounds} if method == "synflow" else None
    batch = calibration(data, seed=seed) if method in ("snip", "grasp") else None
    masks, table = prune_at_init(
        model, method, sparsity, batch, seed=seed, criterion_options=options
    )
    return model, masks, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist1d", choices=["mnist1d", "digits"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=100, help="SynFlow rounds")
    parser.add_argument("--hidden", default="512,32,512")
    parser.add_argument("--max-exponent", type=float, default=3.5)
    parser.add_argument("--train-at", default="10,100,1000", help="compressions to train at")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    data = load_data(args.data)
    grid = [10 ** (0.25 * i) for i in range(1, int(args.max_exponent / 0.25) + 1)]
    train_at = [float(c) for c in args.train_at.split(",")]
    seeds = list(range(args.seeds))

    # ---- connectivity over the grid
    max_conn: dict[str, list[float]] = {m: [] for m in METHODS}
    seconds: dict[str, float] = {m: 0.0 for m in METHODS}
    for method in METHODS:
        for seed in seeds:
            best = 1.0  # 1x: disconnected already at the first grid point
            for c in grid:
                with Timer() as t:
                    _, masks, _ = masks_for(method, data, hidden, seed, c, args.rounds)
                seconds[method] += t.seconds
                if not connected(masks):
                    break
                best = c
            max_conn[method].append(best)

    # ---- densities chosen at 100x (seed 0)
    tables = {m: masks_for(m, data, hidden, 0, 100.0, args.rounds)[2] for m in METHODS}

    # ---- accuracy after training
    dense = [
        train(
            build(data.in_features, data.num_classes, hidden, s), data, epochs=args.epochs, seed=s
        )
        for s in seeds
    ]
    acc: dict[str, dict[float, list[float]]] = {m: {c: [] for c in train_at} for m in METHODS}
    conn_at: dict[str, dict[float, int]] = {m: dict.fromkeys(train_at, 0) for m in METHODS}
    for method in METHODS:
        for c in train_at:
            for seed in seeds:
                model, masks, _ = masks_for(method, data, hidden, seed, c, args.rounds)
                conn_at[method][c] += connected(masks)
                acc[method][c].append(
                    train(model, data, epochs=args.epochs, seed=seed, masks=masks)
                )

    mag = statistics.median(max_conn["magnitude"])
    print(
        f"data={data.name}  MLP {data.in_features}-{'-'.join(map(str, hidden))}-"
        f"{data.num_classes}  seeds={args.seeds}  epochs={args.epochs}  synflow rounds={args.rounds}"
    )
    print(f"dense accuracy: {mean_std(dense)}\n")
    print(
        "| method | max connected compression per seed | median | vs global magnitude | "
        "scoring time over the grid (s) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for m in METHODS:
        per_seed = ", ".join(f"{c:,.0f}x" for c in max_conn[m])
        med = statistics.median(max_conn[m])
        print(f"| {m} | {per_seed} | {med:,.0f}x | {med / mag:.2f} | {seconds[m]:.1f} |")
    print("\nTest accuracy after training (mean ± std over seeds; [connected seeds]):\n")
    header = " | ".join(f"{c:,.0f}x" for c in train_at)
    print(f"| method | {header} |")
    print("| --- |" + " --- |" * len(train_at))
    for m in METHODS:
        cells = " | ".join(
            f"{mean_std(acc[m][c])} [{conn_at[m][c]}/{len(seeds)}]" for c in train_at
        )
        print(f"| {m} | {cells} |")
    print("\nPer-layer densities chosen at 100x (seed 0):\n")
    names = [r.name for r in tables[METHODS[0]].rows]
    sizes = [f"{r.name} ({'x'.join(map(str, r.shape))})" for r in tables[METHODS[0]].rows]
    print("| method | " + " | ".join(sizes) + " |")
    print("| --- |" + " --- |" * len(names))
    for m in METHODS:
        d = tables[m].densities()
        print(f"| {m} | " + " | ".join(f"{d[n]:.2%}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
