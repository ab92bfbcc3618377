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
    """The data of an experiment: what :func:`prunekit.data.create_dataset` returns and what a
    config's ``data: {factory: "mypkg.data:build"}`` function must return.

    Attributes:
        name: a label (shown in reports; runs are compared per data set and model).
        train / val / test: :class:`TensorData` splits, inputs ``x`` and integer targets ``y``
            (``val`` may be empty; evaluation then reports the test split only).
        num_classes: number of classes (vocabulary size for language modelling); models whose
            factory takes ``num_classes`` get it from here.
        input_shape: shape of one input example, e.g. ``(1, 8, 8)`` or ``(40,)``; fills in
            ``in_features`` / ``in_channels`` / ``length`` of the model factory.
        task: ``"classification"`` (cross-entropy, top-1) or ``"lm"`` (next-token, perplexity).
        augment: optional train-time augmentation ``f(x, generator) -> x`` on a batch.
        info: free-form facts (source, sizes, tokenizer).

    Build one from any map-style datasets of ``(x, y)`` pairs with :meth:`from_datasets`.
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

    @classmethod
    def from_datasets(
        cls,
        train: Any,
        test: Any,
        val: Any = None,
        *,
        name: str = "custom",
        num_classes: int | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
        task: str = "classification",
        augment: Any = None,
    ) -> DatasetBundle:
        """A bundle from map-style datasets (``len(ds)`` and ``ds[i] -> (x, y)``), e.g. a
        ``torch.utils.data.Dataset`` or a list of pairs; every item is read once into memory.

        Args:
            train / test / val: the splits; without ``val``, ``val_fraction`` of ``train`` is
                held out (deterministically by ``seed``), or none when it is 0.
            num_classes: default ``max(y) + 1`` over all splits.
        """
        train_data = to_tensor_data(train, "train")
        test_data = to_tensor_data(test, "test")
        if val is not None:
            val_data = to_tensor_data(val, "val")
        elif val_fraction > 0:
            train_data, val_data = split_train_val(train_data, val_fraction, seed)
        else:
            val_data = TensorData(train_data.x[:0], train_data.y[:0])
        if num_classes is None:
            ys = [d.y for d in (train_data, val_data, test_data) if len(d)]
            num_classes = int(max(int(y.max()) for y in ys)) + 1
        return cls(
            name,
            train_data,
            val_data,
            test_data,
            int(num_classes),
            tuple(int(s) for s in train_data.x.shape[1:]),
            task=task,
            augment=augment,
        )


def to_tensor_data(dataset: Any, argument: str = "dataset") -> TensorData:
    """Stack a map-style dataset of ``(x, y)`` pairs into :class:`TensorData` (``y`` as long)."""
    if isinstance(dataset, TensorData):
        return dataset
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(
            f"{argument}: expected a map-style dataset (len() and [i] -> (x, y)), "
            f"got {type(dataset).__name__}"
        ) from None
    if n == 0:
        raise ValueError(f"{argument}: the dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"{argument}[{i}]: expected an (x, y) pair, got {type(item).__name__}")
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    try:
        x = torch.stack(xs)
    except RuntimeError as err:
        raise ValueError(f"{argument}: inputs differ in shape ({err})") from None
    y = torch.stack(ys)
    if y.is_floating_point():
        raise TypeError(f"{argument}: targets must be integers (class indices), got {y.dtype}")
    if not x.is_floating_point() and x.dtype not in (torch.long, torch.int):
        x = x.float()
    return TensorData(x, y.long())


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
