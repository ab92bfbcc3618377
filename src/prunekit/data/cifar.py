"""CIFAR-10 / CIFAR-100 from the standard python-pickle batches at a path the user gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prunekit.data.base import TensorData
from prunekit.data.safe_pickle import restricted_load

# Per-channel statistics of the CIFAR training sets (for standardisation).
_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}

_LAYOUT = {
    10: (
        "cifar-10-batches-py",
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        ["test_batch"],
        b"labels",
    ),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def _layout_message(classes: int) -> str:
    folder, train, test, _ = _LAYOUT[classes]
    return (
        f"expected the CIFAR-{classes} python version: a folder {folder!r} (or the folder "
        f"holding it) with the pickled batches {', '.join(train + test)} "
        f"(from cifar-{classes}-python.tar.gz; nothing is downloaded)"
    )


def _find_root(path: str | Path, classes: int) -> Path:
    folder, train, test, _ = _LAYOUT[classes]
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"path: {str(root)!r} does not exist; {_layout_message(classes)}")
    for candidate in (root, root / folder):
        if all((candidate / f).is_file() for f in train + test):
            return candidate
    missing = [
        f for f in train + test if not (root / f).is_file() and not (root / folder / f).is_file()
    ]
    raise FileNotFoundError(
        f"path: {str(root)!r} lacks {', '.join(missing)}; {_layout_message(classes)}"
    )


def _read_batch(file: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(file, "rb") as handle:
            batch = restricted_load(handle)
    except Exception as err:  # malformed or hostile file: say which and what was expected
        raise ValueError(
            f"path: cannot read {str(file)!r}: {err}; {_layout_message(classes)}"
        ) from err
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(
            f"path: {str(file)!r} is not a CIFAR batch (a dict with b'data' and {label_key!r}); "
            + _layout_message(classes)
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"path: {str(file)!r}: b'data' should be uint8 of shape (N, 3072), got "
            f"{data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"path: {str(file)!r}: labels do not match the data or lie outside 0..{classes - 1}"
        )
    return data, labels


def load_cifar(
    path: str | Path, classes: int = 10, normalize: bool = True
) -> tuple[TensorData, TensorData]:
    """Read the CIFAR-10 or CIFAR-100 python batches under ``path``: (train, test) as float tensors.

    Images come out as ``(N, 3, 32, 32)`` float32, standardised per channel when ``normalize``.

    Raises:
        FileNotFoundError: the folder or a batch is missing (the message gives the layout).
        ValueError: a batch is malformed or contains anything but plain data.
    """
    if classes not in _LAYOUT:
        raise ValueError(f"classes: CIFAR has 10 or 100 classes, got {classes}")
    root = _find_root(path, classes)
    _, train_files, test_files, label_key = _LAYOUT[classes]

    def read(files: list[str]) -> TensorData:
        parts = [_read_batch(root / f, label_key, classes) for f in files]
        x = torch.from_numpy(np.concatenate([p[0] for p in parts])).reshape(-1, 3, 32, 32)
        x = x.float().div_(255.0)
        if normalize:
            mean = torch.tensor(_MEAN[classes]).view(1, 3, 1, 1)
            std = torch.tensor(_STD[classes]).view(1, 3, 1, 1)
            x = (x - mean) / std
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        return TensorData(x, y)

    return read(train_files), read(test_files)
