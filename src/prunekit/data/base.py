"""Tensor datasets, deterministic splits and the dataset bundle every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TensorData:
    """Inputs ``x`` and targets ``y`` held as tensors with the same first dimension."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise TypeError("TensorData: x and y must be torch tensors")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"TensorData: x has {self.x.shape[0]} examples but y has {self.y.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: Any) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def subset(self, index: Tensor) -> TensorData:
        return TensorData(self.x[index], self.y[index])


@dataclass
class DatasetBundle:
    """What :func:`prunekit.data.create_dataset` returns.

    Attributes:
        name: registry name.
        train / val / test: the splits (``val`` may be empty when ``val_fraction=0``).
        num_classes: classes (vocabulary size for language modelling).
        input_shape: shape of one input example, e.g. ``(1, 8, 8)`` or ``(40,)``.
        task: ``"classification"`` or ``"lm"``.
        augment: optional train-time augmentation ``f(x, generator) -> x`` on a batch.
        info: free-form facts (source, sizes, tokenizer).
    """

    name: str
    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "classification"
    augment: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into consecutive parts of the given fractions.

    The last part takes what rounding leaves, so the parts always cover all ``n`` indices.
    """
    if any(f < 0 for f in fractions) or sum(fractions) > 1.0 + 1e-9:
        raise ValueError(
            f"fractions: expected non-negative fractions summing to <= 1, got {fractions}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    out, start = [], 0
    for size in sizes:
        out.append(perm[start : start + size])
        start += size
    return out


def split_train_val(
    data: TensorData, val_fraction: float, seed: int
) -> tuple[TensorData, TensorData]:
    """Deterministic train / validation split of ``data`` by ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
    val_idx, train_idx = split_indices(len(data), (val_fraction, 1.0 - val_fraction), seed)
    return data.subset(train_idx.sort().values), data.subset(val_idx.sort().values)
