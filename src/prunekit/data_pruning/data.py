"""Batched, copy-free access to any map-style dataset of ``(x, y)``: views, batches, fingerprints."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from prunekit.data.base import TensorData
from prunekit.training.trainer import MapData, _as_data

__all__ = ["IndexView", "as_batched", "fingerprint", "iter_batches", "labels_of"]


def as_batched(data: Any, argument: str = "data") -> TensorData | MapData:
    """``data`` as something indexable by a tensor of indices that returns a stacked batch.

    TensorData and ``(x, y)`` tensors are used as they are; any other map-style Dataset of
    ``(x, y)`` items is wrapped (items are stacked per batch, never all at once).
    """
    return _as_data(data, argument)


class IndexView(MapData):
    """The examples ``indices`` of ``data`` without copying them (a kept subset for training).

    Indexing with a tensor (or a slice) of positions returns the stacked batch of the underlying
    examples, so a :class:`~prunekit.training.Trainer` trains on the subset directly.
    """

    def __init__(self, data: Any, indices: Tensor) -> None:
        self.base = as_batched(data)
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if self.indices.numel() and (
            int(self.indices.min()) < 0 or int(self.indices.max()) >= len(self.base)
        ):
            raise ValueError(
                f"indices: expected positions in [0, {len(self.base)}), got "
                f"{int(self.indices.min())}..{int(self.indices.max())}"
            )

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        return self.base[self.indices[index]]


def iter_batches(data: Any, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(indices, x, y)`` over ``data`` in order, ``batch_size`` examples at a time."""
    batched = as_batched(data)
    n = len(batched)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n), device="cpu")  # host-side indices
        x, y = batched[idx]
        yield idx, x, y


def labels_of(data: Any, batch_size: int = 1024) -> Tensor:
    """All labels of ``data`` (one small tensor; inputs are read batch by batch)."""
    batched = as_batched(data)
    if isinstance(batched, TensorData):
        return batched.y
    return torch.cat([y.reshape(-1) for _, _, y in iter_batches(batched, batch_size)])


def fingerprint(data: Any, batch_size: int = 1024) -> str:
    """SHA-256 of the examples and labels (values, dtypes and shapes), read batch by batch.

    Two data sets with the same fingerprint hold the same examples in the same order, so scores
    computed on one are valid for the other.
    """
    h = hashlib.sha256()
    batched = as_batched(data)
    h.update(f"n={len(batched)};".encode())
    for _, x, y in iter_batches(batched, batch_size):
        for t in (x, y):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape[1:])};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
