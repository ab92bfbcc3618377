"""Offline datasets: MNIST-1D, scikit-learn digits, CIFAR-10/100 (local batches), local text.

>>> from prunekit.data import create_dataset
>>> bundle = create_dataset("digits", seed=0)
>>> bundle.input_shape, bundle.num_classes
((1, 8, 8), 10)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from prunekit.core.registry import Registry
from prunekit.data.augment import CropFlip, random_crop, random_hflip
from prunekit.data.base import DatasetBundle, TensorData, split_indices, split_train_val
from prunekit.data.cifar import load_cifar
from prunekit.data.safe_pickle import RestrictedUnpickler, restricted_load
from prunekit.data.text import lm_chunks, split_tokens, tokenize_file

DATASETS: Registry = Registry("dataset")


def create_dataset(name: str, **kwargs: Any) -> DatasetBundle:
    """Build a registered dataset, e.g. ``create_dataset("mnist1d", num_samples=4000, seed=0)``."""
    factory = DATASETS.get(name, argument="dataset")
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise TypeError(f"dataset {name!r}: {err}") from err


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names()


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a fraction in [0, 1), got {value!r}")
    return float(value)


@DATASETS.register("mnist1d")
def mnist1d(
    num_samples: int = 5000,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_seed: int = 42,
    train_split: float = 0.8,
    **overrides: Any,
) -> DatasetBundle:
    """MNIST-1D (Greydanus 2020) generated procedurally: 10 classes, sequences of length 40.

    ``data_seed`` seeds the generator (42 reproduces the reference data set); ``seed`` seeds the
    train / validation split. Extra keyword arguments override fields of
    ``mnist1d.data.get_dataset_args()`` (e.g. ``shuffle_seq=True``).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # optional dependency
        raise ImportError(
            "dataset 'mnist1d': needs the 'mnist1d' package (pip install prunekit[data])"
        ) from err
    if num_samples < 20:
        raise ValueError(f"num_samples: expected at least 20, got {num_samples}")
    _check_fraction("val_fraction", val_fraction)
    args = get_dataset_args()
    unknown = sorted(set(overrides) - set(vars(args)) | {"url"} & set(overrides))
    if unknown:
        raise TypeError(f"unexpected MNIST-1D arguments {unknown}")
    for key, value in {
        **overrides,
        "num_samples": num_samples,
        "seed": data_seed,
        "train_split": train_split,
    }.items():
        setattr(args, key, value)
    # make_dataset reseeds numpy's and Python's global generators: restore them afterwards.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    train_all = TensorData(
        torch.tensor(raw["x"], dtype=torch.float32), torch.tensor(raw["y"], dtype=torch.long)
    )
    test = TensorData(
        torch.tensor(raw["x_test"], dtype=torch.float32),
        torch.tensor(raw["y_test"], dtype=torch.long),
    )
    train, val = split_train_val(train_all, val_fraction, seed)
    length = int(train_all.x.shape[1])
    return DatasetBundle(
        "mnist1d",
        train,
        val,
        test,
        10,
        (length,),
        info={"source": "mnist1d.make_dataset", "data_seed": data_seed, "num_samples": num_samples},
    )


@DATASETS.register("digits")
def digits(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> DatasetBundle:
    """scikit-learn's 8x8 handwritten digits (1797 images, bundled with scikit-learn), standardised."""
    from sklearn.datasets import load_digits

    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(raw.target, dtype=torch.long)
    train_idx, val_idx, test_idx = split_indices(
        len(y), (1.0 - val_fraction - test_fraction, val_fraction, test_fraction), seed
    )
    mean, std = x[train_idx].mean(), x[train_idx].std()  # statistics of the training part only
    x = (x - mean) / std
    data = TensorData(x, y)
    return DatasetBundle(
        "digits",
        data.subset(train_idx),
        data.subset(val_idx),
        data.subset(test_idx),
        10,
        (1, 8, 8),
        info={"source": "sklearn.datasets.load_digits"},
    )


def _cifar(
    classes: int, path: str | None, val_fraction: float, seed: int, augment: bool
) -> DatasetBundle:
    if path is None:
        raise ValueError(
            f"path: CIFAR-{classes} is read from local python batches; pass path=... "
            "(nothing is downloaded)"
        )
    _check_fraction("val_fraction", val_fraction)
    train_all, test = load_cifar(path, classes)
    train, val = split_train_val(train_all, val_fraction, seed)
    return DatasetBundle(
        f"cifar{classes}",
        train,
        val,
        test,
        classes,
        (3, 32, 32),
        augment=CropFlip(4) if augment else None,
        info={"source": str(path)},
    )


@DATASETS.register("cifar10")
def cifar10(
    path: str | None = None, val_fraction: float = 0.1, seed: int = 0, augment: bool = True
) -> DatasetBundle:
    """CIFAR-10 from the python batches at ``path`` (crop + flip augmentation by default)."""
    return _cifar(10, path, val_fraction, seed, augment)


@DATASETS.register("cifar100")
def cifar100(
    path: str | None = None, val_fraction: float = 0.1, seed: int = 0, augment: bool = True
) -> DatasetBundle:
    """CIFAR-100 (fine labels) from the python batches at ``path``."""
    return _cifar(100, path, val_fraction, seed, augment)


@DATASETS.register("text")
def text(
    path: str | None = None,
    block_size: int = 128,
    tokenizer: str | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> DatasetBundle:
    """A local text file as next-token batches (bytes by default, or a local HF tokenizer)."""
    if path is None:
        raise ValueError("path: the text dataset needs a local file, pass path=...")
    tokens, vocab = tokenize_file(path, tokenizer)
    parts = split_tokens(tokens, val_fraction, test_fraction)

    def chunks(t: torch.Tensor) -> TensorData:
        if t.numel() <= block_size:
            empty = torch.zeros(0, block_size, dtype=torch.long)
            return TensorData(empty, empty.clone())
        return lm_chunks(t, block_size)

    train = lm_chunks(parts[0], block_size)
    return DatasetBundle(
        "text",
        train,
        chunks(parts[1]),
        chunks(parts[2]),
        vocab,
        (block_size,),
        task="lm",
        info={
            "source": str(path),
            "tokenizer": tokenizer or "bytes",
            "tokens": int(tokens.numel()),
        },
    )


__all__ = [
    "DATASETS",
    "CropFlip",
    "DatasetBundle",
    "RestrictedUnpickler",
    "TensorData",
    "create_dataset",
    "list_datasets",
    "lm_chunks",
    "load_cifar",
    "random_crop",
    "random_hflip",
    "restricted_load",
    "split_indices",
    "split_train_val",
    "split_tokens",
    "tokenize_file",
]
