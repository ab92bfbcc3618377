"""Cost of a training step with masks enforced, against the dense step and torch.nn.utils.prune.

Variants, measured interleaved in the same run (median over rounds):
  dense          plain step, no pruning
  prunekit       masks.attach(optimizer, model): weights and momentum re-zeroed after each step
  prunekit-bool  the same with fast=False (boolean masks only, less memory)
  torch.prune    torch.nn.utils.prune: weight = weight_orig * mask recomputed on every forward

    python benchmarks/bench_masked_step.py
    python benchmarks/bench_masked_step.py --rounds 15 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.utils.prune as tprune
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine  # noqa: E402

import prunekit  # noqa: E402


def mlp() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 10),
    )
    return model, torch.randn(256, 1, 28, 28)


def cnn() -> tuple[nn.Module, torch.Tensor]:
    model = prunekit.create_model("resnet20", num_classes=10)
    return model, torch.randn(128, 3, 32, 32)


def make_variant(kind: str, base: nn.Module, sparsity: float):
    model = copy.deepcopy(base)
    optimizer_params = None
    handle = None
    if kind in ("prunekit", "prunekit-bool"):
        masks = prunekit.prune(model, sparsity)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        handle = masks.attach(optimizer, model, fast=kind == "prunekit")
        return model, optimizer, handle
    if kind == "torch.prune":
        targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=sparsity)
    optimizer_params = model.parameters()
    return model, torch.optim.SGD(optimizer_params, lr=0.01, momentum=0.9), handle


def run_steps(model, optimizer, x, y, steps: int) -> float:
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def bench(name: str, factory, sparsity: float, rounds: int, steps: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    base, x = factory()
    y = torch.randint(0, 10, (x.shape[0],))
    kinds = ["dense", "prunekit", "prunekit-bool", "torch.prune"]
    variants = {k: make_variant(k, base, sparsity) for k in kinds}
    for model, optimizer, _ in variants.values():  # warm-up
        run_steps(model, optimizer, x, y, 2)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            model, optimizer, _ = variants[kind]
            times[kind].append(run_steps(model, optimizer, x, y, steps))
    return [(k, statistics.median(v)) for k, v in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    print(f"masked training step, SGD with momentum, {args.sparsity:.0%} sparse ({machine()})")
    for name, factory, label in [
        ("mlp", mlp, "MLP 784-2048-2048-10, batch 256"),
        ("cnn", cnn, "ResNet-20 (CIFAR), batch 128"),
    ]:
        rows = bench(name, factory, args.sparsity, args.rounds, args.steps)
        dense = rows[0][1]
        torch_prune = dict(rows)["torch.prune"]
        print(f"\n{label}")
        print(f"{'variant':<16}{'ms / step':>11}{'vs dense':>10}{'vs torch.prune':>16}")
        print("-" * 53)
        for kind, seconds in rows:
            print(
                f"{kind:<16}{seconds * 1e3:>11.2f}{seconds / dense:>10.3f}{seconds / torch_prune:>16.3f}"
            )


if __name__ == "__main__":
    main()
