"""Buffers for the calibration activations of one block: on the compute device, in CPU memory, or
on disk (one safetensors file per batch), so that only one batch needs to be on the device."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from prunekit.core.serialization import atomic_path, make_dirs

__all__ = ["ActivationStore"]

OFFLOAD_MODES = (None, "cpu", "disk")


class ActivationStore:
    """A list of activation batches; ``store[i]`` comes back on ``device``.

    Args:
        device: where batches are used.
        offload: None (keep on ``device``), ``"cpu"`` or ``"disk"``.
        directory: where ``"disk"`` writes its files (a temporary directory by default,
            removed by :meth:`close`).
    """

    def __init__(
        self, device: torch.device, offload: str | None = None, directory: str | Path | None = None
    ) -> None:
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload: expected None, 'cpu' or 'disk', got {offload!r}")
        self.device = torch.device(device)
        self.offload = offload
        self._items: list[Tensor | Path | None] = []
        self._dir: Path | None = None
        self._own_dir = False
        if offload == "disk":
            if directory is None:
                self._dir = Path(tempfile.mkdtemp(prefix="prunekit-activations-"))
                self._own_dir = True
            else:
                self._dir = make_dirs(directory)
        self._tag = f"{id(self):x}"

    def __len__(self) -> int:
        return len(self._items)

    def _put(self, index: int, tensor: Tensor) -> Tensor | Path:
        tensor = tensor.detach()
        if self.offload == "cpu":
            return tensor.to("cpu", copy=tensor.device.type != "cpu")
        if self.offload == "disk":
            assert self._dir is not None
            path = self._dir / f"act-{self._tag}-{index}.safetensors"
            with atomic_path(path) as tmp:  # never through a link planted in the folder
                save_file({"x": tensor.contiguous().cpu()}, str(tmp))
            return path
        return tensor.to(self.device)

    def append(self, tensor: Tensor) -> None:
        self._items.append(self._put(len(self._items), tensor))

    def __setitem__(self, index: int, tensor: Tensor) -> None:
        self._items[index] = self._put(index, tensor)

    def __getitem__(self, index: int) -> Tensor:
        item = self._items[index]
        if isinstance(item, Path):
            return load_file(str(item))["x"].to(self.device)
        if item is None:
            raise IndexError(index)
        return item.to(self.device)

    def nbytes(self) -> int:
        """Bytes held in memory (0 for batches on disk)."""
        return sum(t.numel() * t.element_size() for t in self._items if isinstance(t, Tensor))

    def close(self) -> None:
        for item in self._items:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        self._items = []
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
