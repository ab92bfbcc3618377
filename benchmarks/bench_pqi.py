"""PQ Index over IMP rounds beside the accuracy, and SAP's adaptive amounts vs IMP's fixed 20%.

A dense MLP is trained, then pruned over rounds by global magnitude; after every round the
network is retrained (LR rewinding: the cosine schedule is replayed for ``--retrain`` epochs).
After each retraining we log the sparsity, the PQ Index (p = 0.5, q = 1, global and per layer)
and the test accuracy. Diao et al. (2023) report that the PQ Index first rises with pruning and
turns down around where the pruned model starts to lose accuracy. SAP (``SAPSchedule``) then
prunes the same model with amounts chosen from the PQ Index, for the same number of rounds.

    python benchmarks/bench_pqi.py                 # 3 seeds, 12 rounds, a few minutes
    python benchmarks/bench_pqi.py --rounds 20 --retrain 20
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
from prunekit.core.pqi import SAPSchedule, pq_index_report  # noqa: E402


def build(data, hidden, seed):
    torch.manual_seed(seed)
    return prunekit.create_model(
        "mlp", in_features=data.in_features, hidden=hidden, num_classes=data.num_classes
    )


def trajectory(kind, data, hidden, seed, rounds, epochs, retrain, lr):
    """Rows (round, sparsity, global PQI, per-layer PQI, accuracy, global PQI right after
    pruning, before retraining); round 0 is the trained dense model. PQIs are after retraining."""
    model = build(data, hidden, seed)
    acc = train(model, data, epochs=epochs, seed=seed, lr=lr)
    masks = prunekit.compute_masks(model, 0.0)
    report = pq_index_report(model, masks)
    rows = [(0, 0.0, report.global_index, report.layers, acc, report.global_index)]
    sap = SAPSchedule()
    for r in range(1, rounds + 1):
        if kind == "IMP":
            target = 1.0 - 0.8**r  # 20% of the remaining weights per round
            masks = prunekit.prune(model, target, masks=masks)
        else:
            masks = sap.prune_round(model, masks)
        pruned_pqi = pq_index_report(model, masks).global_index
        acc = train(model, data, epochs=retrain, seed=seed * 100 + r, lr=lr, masks=masks)
        report = pq_index_report(model, masks)
        rows.append((r, masks.sparsity, report.global_index, report.layers, acc, pruned_pqi))
    return rows


def turning_point(rows):
    """Round of the highest global PQ Index after retraining (after which it decreases)."""
    return max(rows, key=lambda row: row[2])[0]


def accuracy_drop(rows, tolerance):
    """First round whose accuracy is below the dense accuracy minus ``tolerance``."""
    dense = rows[0][4]
    for row in rows[1:]:
        if row[4] < dense - tolerance:
            return row[0]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist1d", choices=["mnist1d", "digits"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--retrain", type=int, default=8, help="retraining epochs per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", default="300,300")
    parser.add_argument("--tolerance", type=float, default=0.01, help="accuracy drop threshold")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    data = load_data(args.data)
    seeds = list(range(args.seeds))
    runs = {
        kind: [
            trajectory(kind, data, hidden, s, args.rounds, args.epochs, args.retrain, args.lr)
            for s in seeds
        ]
        for kind in ("IMP", "SAP")
    }
    print(
        f"data={data.name}  MLP {data.in_features}-{'-'.join(map(str, hidden))}-"
        f"{data.num_classes}  dense epochs={args.epochs}  retrain epochs/round={args.retrain}  "
        f"seeds={args.seeds}"
    )
    layer_names = list(runs["IMP"][0][0][3])
    for kind in ("IMP", "SAP"):
        print(f"\n{kind} (mean over seeds):\n")
        head = " | ".join(f"PQI {n}" for n in layer_names)
        print(
            f"| round | sparsity | global PQI after pruning | global PQI after retraining "
            f"| {head} | test accuracy |"
        )
        print("| --- | --- | --- | --- |" + " --- |" * len(layer_names) + " --- |")
        for r in range(args.rounds + 1):
            rows = [run[r] for run in runs[kind]]
            sparsity = statistics.mean(row[1] for row in rows)
            pqi = statistics.mean(row[2] for row in rows)
            pruned = statistics.mean(row[5] for row in rows)
            layers = " | ".join(
                f"{statistics.mean(row[3][n] for row in rows):.4f}" for n in layer_names
            )
            accs = mean_std([row[4] for row in rows])
            print(f"| {r} | {sparsity:.4f} | {pruned:.4f} | {pqi:.4f} | {layers} | {accs} |")
    print("\nWhere the PQ Index turns vs where accuracy drops (per seed):\n")
    print(f"| schedule | PQI peak round | first round with accuracy < dense - {args.tolerance} |")
    print("| --- | --- | --- |")
    for kind in ("IMP", "SAP"):
        peaks = ", ".join(str(turning_point(run)) for run in runs[kind])
        drops = ", ".join(str(accuracy_drop(run, args.tolerance)) for run in runs[kind])
        print(f"| {kind} | {peaks} | {drops} |")
    imp_final = statistics.mean(run[-1][4] for run in runs["IMP"])
    sap_final = statistics.mean(run[-1][4] for run in runs["SAP"])
    imp_s = statistics.mean(run[-1][1] for run in runs["IMP"])
    sap_s = statistics.mean(run[-1][1] for run in runs["SAP"])
    print(
        f"\nAfter {args.rounds} rounds: IMP sparsity {imp_s:.4f} accuracy {imp_final:.3f}; "
        f"SAP sparsity {sap_s:.4f} accuracy {sap_final:.3f} "
        f"(accuracy ratio SAP/IMP {sap_final / imp_final:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
