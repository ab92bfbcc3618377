"""Shared pieces of the criteria / sparse-training / PQ-index benchmarks.

Data comes from local generators only: MNIST-1D (``mnist1d.data.make_dataset``, generated from
the templates shipped with the package, never downloaded) or scikit-learn's digits.
A minimal plain-PyTorch training loop keeps the masks enforced through ``MaskSet.attach``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.core.masks import MaskSet


@dataclass
class Dataset:
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str

    @property
    def in_features(self) -> int:
        return self.x.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


def setup_threads(threads: int) -> None:
    """Few threads: on a shared 2-core machine extra threads only contend (10x slower sorts)."""
    torch.set_num_threads(max(1, threads))


def load_data(name: str = "mnist1d", seed: int = 0) -> Dataset:
    """MNIST-1D (4000 train / 1000 test, 40 features) or sklearn digits (64 features), standardised."""
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = 42  # the dataset itself is fixed; runs differ by model seed
        raw = make_dataset(args)
        x, y = torch.tensor(raw["x"]).float(), torch.tensor(raw["y"]).long()
        xt, yt = torch.tensor(raw["x_test"]).float(), torch.tensor(raw["y_test"]).long()
    elif name == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(raw.target), generator=g)
        x_all = torch.tensor(raw.data).float()[order]
        y_all = torch.tensor(raw.target).long()[order]
        x, y, xt, yt = x_all[:1400], y_all[:1400], x_all[1400:], y_all[1400:]
    else:
        raise ValueError(f"data: expected 'mnist1d' or 'digits', got {name!r}")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return Dataset((x - mean) / std, y, (xt - mean) / std, yt, name)


def batches(data: Dataset, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled training batches."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.y), generator=g)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx], data.y[idx]


def calibration(data: Dataset, batch_size: int = 256, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """A single fixed batch for SNIP / GraSP scores."""
    return [next(batches(data, batch_size, seed + 1000))]


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset) -> float:
    model.eval()
    out = model(data.x_test).argmax(1)
    model.train()
    return float((out == data.y_test).float().mean())


StepHook = Callable[[int], bool]


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    masks: MaskSet | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    before_step: StepHook | None = None,
    after_step: Callable[[int], None] | None = None,
) -> float:
    """Adam training with cosine LR; returns test accuracy. ``before_step(step)`` may veto a step."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(data.y) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    handle = masks.attach(optimizer, model) if masks is not None else None
    step = 0
    model.train()
    for epoch in range(epochs):
        for x, y in batches(data, batch_size, seed * 1000 + epoch):
            step += 1
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if before_step is None or before_step(step):
                optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(step)
    if handle is not None:
        handle.remove()
    return accuracy(model, data)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
