"""Compressed storage of a finalized sparse model: non-zero values plus a bitmask per tensor.

A tensor is stored compressed only when that is smaller than storing it dense, so the file never
grows. Loading rebuilds the identical dense state_dict; nothing is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.serialization import load_safetensors, pack_bits, save_safetensors, unpack_bits

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
    """Read a file written by :func:`save_compressed` back into a dense state_dict."""
    tensors, meta = load_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"path: {str(path)!r} is not a prunekit compressed model (format {meta.get('format')!r})"
        )
    state: dict[str, Tensor] = {}
    for name in meta["order"]:
        entry = meta["tensors"][name]
        if entry["storage"] == "dense":
            state[name] = tensors[name]
            continue
        shape = tuple(entry["shape"])
        keep = unpack_bits(tensors[f"{name}/bitmask"], shape).reshape(-1)
        values = tensors[f"{name}/values"]
        dense = torch.zeros(keep.numel(), dtype=getattr(torch, entry["dtype"]), device=keep.device)
        dense[keep] = values
        state[name] = dense.reshape(shape)
    return state


def load_compressed_into(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = True
) -> nn.Module:
    """Load a compressed file into ``model`` (same architecture) and return it."""
    model.load_state_dict(load_compressed(path), strict=strict)
    return model
