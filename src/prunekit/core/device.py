"""The device rule in one place: new tensors live where the tensor they belong to lives.

Masks, scores, indices and buffers that meet a parameter are created with these helpers, e.g.
``arange_like(param, k)`` instead of ``torch.arange(k)``: the result is on ``param.device``, so
the same code runs with the model on the CPU, a GPU or the ``meta`` device. The helpers are
thin on purpose (one keyword), and grep-able: a bare ``torch.zeros(n)`` in library code is a bug
the test suite's static check reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "arange_like",
    "default_device",
    "device_of",
    "empty_like",
    "full_like",
    "ones_like",
    "resolve_device",
    "tensor_like",
    "zeros_like",
]


def device_of(ref: Tensor | torch.nn.Module | torch.device | str) -> torch.device:
    """The device of a tensor, of a module's first parameter (or buffer), or a device itself.

    A module without parameters or buffers lives on the CPU.
    """
    if isinstance(ref, Tensor):
        return ref.device
    if isinstance(ref, torch.nn.Module):
        for t in ref.parameters():
            return t.device
        for t in ref.buffers():
            return t.device
        return torch.device("cpu")
    return torch.device(ref)


def default_device() -> torch.device:
    """Where training runs when no device is named: CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(spec: torch.device | str | None, argument: str = "device") -> torch.device:
    """``None`` or ``"auto"`` -> :func:`default_device`; anything else must name a torch device.

    Raises:
        ValueError: naming ``argument`` when ``spec`` is not a device.
    """
    if spec is None or spec == "auto":
        return default_device()  # a module global: a test may stand a virtual device in
    try:
        return torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{argument}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}"
        ) from exc


def _size(shape: tuple[Any, ...]) -> tuple[int, ...]:
    # accept zeros_like(p, 3, 4) and zeros_like(p, (3, 4)) like torch.zeros does
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return tuple(shape[0])
    return tuple(shape)


def zeros_like(ref: Tensor, *shape: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.zeros(shape)`` on ``ref``'s device (dtype defaults to ``ref``'s)."""
    return torch.zeros(_size(shape), dtype=dtype or ref.dtype, device=ref.device)


def ones_like(ref: Tensor, *shape: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.ones(shape)`` on ``ref``'s device (dtype defaults to ``ref``'s)."""
    return torch.ones(_size(shape), dtype=dtype or ref.dtype, device=ref.device)


def empty_like(ref: Tensor, *shape: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.empty(shape)`` on ``ref``'s device (dtype defaults to ``ref``'s)."""
    return torch.empty(_size(shape), dtype=dtype or ref.dtype, device=ref.device)


def full_like(
    ref: Tensor, shape: Sequence[int], value: Any, dtype: torch.dtype | None = None
) -> Tensor:
    """``torch.full(shape, value)`` on ``ref``'s device (dtype defaults to ``ref``'s)."""
    return torch.full(tuple(shape), value, dtype=dtype or ref.dtype, device=ref.device)


def arange_like(ref: Tensor, *args: int, dtype: torch.dtype = torch.long) -> Tensor:
    """``torch.arange(*args)`` (indices, ``long`` by default) on ``ref``'s device."""
    return torch.arange(*args, dtype=dtype, device=ref.device)


def tensor_like(ref: Tensor, data: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.tensor(data)`` on ``ref``'s device (dtype inferred from ``data`` unless given)."""
    return torch.tensor(data, dtype=dtype, device=ref.device)
