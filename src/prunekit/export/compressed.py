"""Compressed storage of a finalized sparse model: non-zero values plus a bitmask per tensor.

A tensor is stored compressed only when that is smaller than storing it dense, so the file never
grows. Loading rebuilds the identical dense state_dict; nothing is unpickled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.core.errors import FileFormatError
from prunekit.core.serialization import (
    check_state_fits,
    expect_format,
    load_safetensors,
    meta_entry,
    pack_bits,
    save_safetensors,
    shape_entry,
    tensor_entry,
    unpack_bits,
)

FORMAT = "prunekit.compressed/1"


def _compressed_bytes(tensor: Tensor, nonzeros: int) -> int:
    return nonzeros * tensor.element_size() + (tensor.numel() + 7) // 8


def compress_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict]:
    """Split each sparse-enough tensor into ``name/values`` and ``name/bitmask``."""
    tensors: dict[str, Tensor] = {}
    layout: dict[str, dict] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        entry = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        nonzero = tensor != 0
        nonzeros = int(nonzero.sum())
        if (
            tensor.is_floating_point()
            and _compressed_bytes(tensor, nonzeros) < tensor.numel() * tensor.element_size()
        ):
            tensors[f"{name}/values"] = tensor.reshape(-1)[nonzero.reshape(-1)]
            tensors[f"{name}/bitmask"] = pack_bits(nonzero)
            entry["storage"] = "bitmask"
        else:
            tensors[name] = tensor
            entry["storage"] = "dense"
        layout[name] = entry
    return tensors, {"format": FORMAT, "tensors": layout, "order": list(state)}


def save_compressed(
    model_or_state: nn.Module | Mapping[str, Tensor], path: str | os.PathLike[str]
) -> None:
    """Save a (finalized) sparse model compactly; the file shrinks with sparsity."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors, meta = compress_state_dict(state)
    save_safetensors(tensors, path, meta)


def load_compressed(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a file written by :func:`save_compressed` back into a dense state_dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: a truncated, corrupt or foreign file (the message names ``path``).
    """
    tensors, meta = load_safetensors(path)
    expect_format(meta, FORMAT, path, "compressed model")
    order = meta_entry(meta, "order", list, path)
    layout = meta_entry(meta, "tensors", dict, path)
    state: dict[str, Tensor] = {}
    for name in order:
        entry = layout.get(name) if isinstance(name, str) else None
        if not isinstance(entry, dict):
            raise FileFormatError(path, f"tensor {name!r} has no layout entry in the metadata")
        shape = shape_entry(entry.get("shape"), f"shape of {name!r}", path)
        dtype = _dtype(entry.get("dtype"), name, path)
        numel = math.prod(shape)
        storage = entry.get("storage")
        if storage == "dense":
            value = tensor_entry(tensors, name, path, dtype=dtype)
            if tuple(value.shape) != shape:
                raise FileFormatError(
                    path, f"tensor {name!r} has shape {list(value.shape)}, expected {list(shape)}"
                )
            state[name] = value
            continue
        if storage != "bitmask":
            raise FileFormatError(path, f"tensor {name!r}: unknown storage {storage!r}")
        bits = tensor_entry(tensors, f"{name}/bitmask", path, dtype=torch.uint8,
                            numel=(numel + 7) // 8)  # fmt: skip
        keep = unpack_bits(bits, shape).reshape(-1)
        values = tensor_entry(tensors, f"{name}/values", path, dtype=dtype)
        kept = int(keep.sum())
        if values.dim() != 1 or values.numel() != kept:
            raise FileFormatError(
                path, f"tensor {name}/values holds {values.numel()} values, its bitmask {kept}"
            )
        dense = torch.zeros(numel, dtype=dtype, device=keep.device)
        dense[keep] = values
        state[name] = dense.reshape(shape)
    return state


def _dtype(name: object, tensor: str, path: str | os.PathLike[str]) -> torch.dtype:
    # Resolve only real dtype names (never an arbitrary attribute of the torch module).
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise FileFormatError(path, f"tensor {tensor!r}: unknown dtype {name!r}")
    return value


def load_compressed_into(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = True
) -> nn.Module:
    """Load a compressed file into ``model`` (same architecture) and return it.

    The whole file is read and checked against the model (names, shapes, dtypes) first; on error
    the model is left untouched.
    """
    state = load_compressed(path)
    check_state_fits(model, state, path, strict=strict)
    model.load_state_dict(state, strict=strict)
    return model
