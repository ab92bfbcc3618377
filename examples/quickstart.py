"""Quickstart: train an MLP on the scikit-learn digits, prune it to 90% with every allocation,
fine-tune briefly with the masks enforced, and print one table.

    python examples/quickstart.py            # about a minute on 2 CPU cores
    python examples/quickstart.py --sparsity 0.95 --finetune-epochs 5

Uses only prunekit and a plain PyTorch training loop: prunekit works inside your own loop.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import prunekit
from prunekit.core.report import format_table

ALLOCATIONS = [
    "global",
    "uniform",
    "uniform_plus",
    "erk",
    "lamp",
    "global_min_keep",
    "per_row",
    "2:4",
]


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Digits images (1797 x 8 x 8) scaled to [0, 1], split 80/20 deterministically."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def train(model, x, y, epochs: int, lr: float, masks=None, seed: int = 0) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    handle = masks.attach(optimizer, model) if masks is not None else None
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    if handle is not None:
        handle.remove()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.9, help="target sparsity (2:4 is always 50%%)"
    )
    parser.add_argument("--epochs", type=int, default=60, help="dense training epochs")
    parser.add_argument(
        "--finetune-epochs", type=int, default=10, help="fine-tuning epochs after pruning"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (tiny models run fastest on one)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits(args.seed)
    dense = prunekit.create_model("mlp", in_features=64, hidden=(128, 512, 256), num_classes=10)
    train(dense, x_train, y_train, args.epochs, lr=1e-3, seed=args.seed)
    dense_acc = accuracy(dense, x_test, y_test)
    print(
        f"dense MLP on digits: test accuracy {dense_acc:.2%} ({time.perf_counter() - start:.0f} s)"
    )

    rows = []
    for allocation in ALLOCATIONS:
        model = copy.deepcopy(dense)
        sparsity = None if ":" in allocation else args.sparsity
        masks = prunekit.prune(model, sparsity, method="magnitude", allocation=allocation)
        pruned_acc = accuracy(model, x_test, y_test)
        train(model, x_train, y_train, args.finetune_epochs, lr=1e-3, masks=masks, seed=args.seed)
        report = prunekit.sparsity_report(model, masks)
        smallest_layer_density = min(1 - s for s in masks.layer_sparsity().values())
        rows.append(
            [
                allocation,
                f"{report.sparsity:.2%}",
                f"{smallest_layer_density:.2%}",
                f"{pruned_acc:.2%}",
                f"{accuracy(model, x_test, y_test):.2%}",
            ]
        )
    print()
    print(
        format_table(
            ["allocation", "sparsity", "min layer density", "acc. pruned", "acc. fine-tuned"], rows
        )
    )
    print(f"\ndense accuracy {dense_acc:.2%}; total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
