"""Shared pieces of bench_soups.py and bench_sfw.py: MNIST-1D data, a small CNN, a plain loop."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable

import torch
from torch import Tensor, nn

Batches = list[tuple[Tensor, Tensor]]


def mnist1d_splits(val_size: int = 500, seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """MNIST-1D generated locally (no download): train / val (held out of train) / test."""
    import mnist1d.data

    ds = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    x = torch.tensor(ds["x"], dtype=torch.float32)
    y = torch.tensor(ds["y"], dtype=torch.long)
    xt = torch.tensor(ds["x_test"], dtype=torch.float32)
    yt = torch.tensor(ds["y_test"], dtype=torch.long)
    mean, std = x.mean(), x.std()
    x, xt = (x - mean) / std, (xt - mean) / std
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (xt, yt)}


def batches(x: Tensor, y: Tensor, size: int, seed: int | None = None) -> Batches:
    order = (
        torch.arange(len(x))
        if seed is None
        else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    )
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(x), size)]


class BNCNN(nn.Module):
    """Three Conv1d + BatchNorm + ReLU blocks and a linear classifier (MNIST-1D, length 40)."""

    def __init__(self, channels: int = 32, num_classes: int = 10, length: int = 40) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, padding=2),
            nn.BatchNorm1d(c),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, padding=1, stride=2),
            nn.BatchNorm1d(c),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, padding=1, stride=2),
            nn.BatchNorm1d(c),
            nn.ReLU(),
        )
        out = ((length + 1) // 2 + 1) // 2
        self.classifier = nn.Linear(c * out, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


def linear_lr(base: float, total: int, warmup_frac: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up for ``warmup_frac`` of the steps, then linear decay to 0 (LLR)."""
    warm = max(1, int(warmup_frac * total))

    def lr(step: int) -> float:
        if step < warm:
            return base * (step + 1) / warm
        return base * max(0.0, (total - step) / max(1, total - warm))

    return lr


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor],
    epochs: int,
    *,
    batch_size: int = 128,
    seed: int = 0,
    lr_fn: Callable[[int], float] | None = None,
) -> None:
    """A plain loop: shuffled mini-batches (seeded), cross-entropy, optional per-step LR."""
    x, y = data
    steps_per_epoch = math.ceil(len(x) / batch_size)
    step = 0
    model.train()
    for epoch in range(epochs):
        for xb, yb in batches(x, y, batch_size, seed=seed * 1000 + epoch):
            if lr_fn is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_fn(step)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            step += 1
    assert step == epochs * steps_per_epoch


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    was = model.training
    model.eval()
    x, y = data
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def machine_note() -> str:
    return (
        f"{torch.get_num_threads()}-thread CPU ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}"
    )


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def mean_std(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    sd = float(t.std()) if len(values) > 1 else 0.0
    return f"{100 * float(t.mean()):.2f} ± {100 * sd:.2f}"
