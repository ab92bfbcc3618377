"""Sparse checkpoints in the compressed-tensors layout that inference engines read.

vLLM (and transformers' ``CompressedTensorsConfig``) load a Hugging Face model folder whose
``config.json`` has a ``quantization_config`` with ``"quant_method": "compressed-tensors"`` and a
``sparsity_config``; the weights of the targeted Linear layers are stored compressed in
``model.safetensors``. Two sparse layouts are written here, with the field names of the
compressed-tensors library (no dependency on it):

``sparse-bitmask`` (any unstructured sparsity), per compressed weight ``<module>.weight``:
    ``<module>.shape``        int64, the dense shape, 1-D
    ``<module>.compressed``   the non-zero values in row-major order, 1-D, the weight's dtype
    ``<module>.bitmask``      uint8 ``(rows, ceil(cols / 8))``: bit ``j % 8`` (least significant
                              first) of byte ``j // 8`` of row ``r`` is set when entry ``(r, j)``
                              is kept (``numpy.packbits(..., axis=-1, bitorder="little")``)
    ``<module>.row_offsets``  int64, index in ``compressed`` where each row starts

``sparse-24-bitmask`` (2:4 semi-structured), per compressed weight:
    ``<module>.shape``        int64 ``(2, 1)``
    ``<module>.compressed``   ``(rows, cols / 2)``: the two kept values of every group of four
    ``<module>.bitmask``      as above, exactly two bits set per group of four

Everything else (biases, norms, embeddings, layers listed in ``ignore``) is stored dense under its
own name. ``sparsity_config`` records ``format``, ``targets`` (``["Linear"]``), ``ignore``,
``global_sparsity`` and ``sparsity_structure`` (``"unstructured"`` or ``"2:4"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from prunekit.core.serialization import atomic_path, make_dirs, write_text_atomic

__all__ = ["FORMATS", "load_compressed_tensors", "save_compressed_tensors"]

FORMATS = ("sparse-bitmask", "sparse-24-bitmask")
_STRUCTURE = {"sparse-bitmask": "unstructured", "sparse-24-bitmask": "2:4"}
_FIELDS = ("shape", "compressed", "bitmask", "row_offsets")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _pack_rows(keep: Tensor) -> Tensor:
    return torch.from_numpy(np.packbits(keep.cpu().numpy(), axis=-1, bitorder="little"))


def _unpack_rows(bitmask: Tensor, rows: int, cols: int) -> Tensor:
    bits = np.unpackbits(bitmask.numpy(), axis=-1, count=cols, bitorder="little")
    return torch.from_numpy(bits.astype(bool)).reshape(rows, cols)


def _bitmask_entry(prefix: str, weight: Tensor) -> dict[str, Tensor]:
    keep = weight != 0
    counts = keep.sum(-1)
    return {
        f"{prefix}.shape": torch.tensor(list(weight.shape), dtype=torch.int64, device="cpu"),
        f"{prefix}.compressed": weight[keep],
        f"{prefix}.bitmask": _pack_rows(keep),
        f"{prefix}.row_offsets": torch.cumsum(counts, 0) - counts,
    }


def _two_four_entry(prefix: str, name: str, weight: Tensor) -> dict[str, Tensor]:
    rows, cols = weight.shape
    if cols % 4 or bool(((weight != 0).reshape(rows, -1, 4).sum(-1) > 2).any()):
        raise ValueError(
            f"model: {name!r} is not 2:4 sparse (more than two non-zeros in a group of four); "
            "save it with format='sparse-bitmask'"
        )
    # Exactly two slots a group: the non-zeros first (a group with fewer keeps explicit zeros).
    groups = weight.reshape(rows, -1, 4)
    order = (groups != 0).to(torch.int8).argsort(dim=-1, descending=True, stable=True)[..., :2]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True).reshape(rows, cols)
    return {
        f"{prefix}.shape": torch.tensor([rows, cols], dtype=torch.int64, device="cpu").reshape(
            -1, 1
        ),
        f"{prefix}.compressed": weight[keep].reshape(rows, cols // 2),
        f"{prefix}.bitmask": _pack_rows(keep),
    }


def _targets(model: nn.Module, ignore: Iterable[str]) -> list[str]:
    skip = set(ignore)
    return [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in skip
    ]


def save_compressed_tensors(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    format: str = "sparse-bitmask",
    ignore: Iterable[str] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json``.

    Every ``nn.Linear`` weight not named in ``ignore`` (module names; default ``["lm_head"]``
    when the model has one) is stored in ``format`` (``"sparse-bitmask"`` or
    ``"sparse-24-bitmask"``, which needs 2:4-sparse weights). A transformers model's own config is
    kept and gains ``quantization_config``; a tied weight is stored once (under its first name).
    Files are written atomically; returns the folder.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {format!r}")
    modules = dict(model.named_modules())
    if ignore is None:
        ignore = ["lm_head"] if isinstance(modules.get("lm_head"), nn.Linear) else []
    ignore = list(ignore)
    unknown = [name for name in ignore if name not in modules]
    if unknown:
        raise ValueError(f"ignore: no module named {unknown[0]!r} in the model")
    targets = set(_targets(model, ignore))
    tensors: dict[str, Tensor] = {}
    zeros = total = 0
    seen: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        # Tied weights (e.g. lm_head = embeddings) are stored once, as transformers does.
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        tensor = tensor.detach().cpu().contiguous()
        total += tensor.numel()
        zeros += int(tensor.numel() - tensor.count_nonzero())
        if name not in targets:
            tensors[name] = tensor
            continue
        prefix = name.removesuffix(".weight")
        if format == "sparse-bitmask":
            tensors.update(_bitmask_entry(prefix, tensor))
        else:
            tensors.update(_two_four_entry(prefix, name, tensor))
    hf_config = getattr(model, "config", None)
    config: dict[str, Any] = hf_config.to_dict() if hasattr(hf_config, "to_dict") else {}
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": format,
        "config_groups": {},
        "sparsity_config": {
            "format": format,
            "targets": ["Linear"],
            "ignore": ignore,
            "global_sparsity": zeros / max(total, 1),
            "sparsity_structure": _STRUCTURE[format],
            "registry_requires_subclass": False,
        },
    }
    target = make_dirs(directory)
    with atomic_path(target / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n",
                      target / CONFIG)  # fmt: skip
    return target


def _sparsity_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"directory: no {CONFIG} in {str(path.parent)!r}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"directory: {str(path)!r} is not valid JSON: {err}") from None
    quant = config.get("quantization_config") or config.get("compression_config") or {}
    sparsity = quant.get("sparsity_config") or {}
    if quant.get("quant_method") != "compressed-tensors" or sparsity.get("format") not in FORMATS:
        raise ValueError(
            f"directory: {str(path)!r} does not describe a compressed-tensors sparse checkpoint "
            f"(expected sparsity_config.format in {list(FORMATS)})"
        )
    return sparsity


def load_compressed_tensors(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a folder written by :func:`save_compressed_tensors` back into a dense state_dict.

    The whole file is checked (field set, shapes, value counts) before anything is returned.
    """
    root = Path(directory)
    fmt = _sparsity_config(root / CONFIG)["format"]
    weights = root / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"directory: no {WEIGHTS} in {str(root)!r}")
    stored = load_file(str(weights))
    prefixes = {k.removesuffix(".bitmask") for k in stored if k.endswith(".bitmask")}
    state: dict[str, Tensor] = {}
    for name, tensor in stored.items():
        prefix, _, field = name.rpartition(".")
        if prefix not in prefixes or field not in _FIELDS:
            state[name] = tensor  # stored dense (a compressed layer's bias too)
        elif field == "bitmask":
            state[f"{prefix}.weight"] = _decompress(stored, prefix, fmt, weights)
    return state


def _decompress(stored: Mapping[str, Tensor], prefix: str, fmt: str, path: Path) -> Tensor:
    fields = ["shape", "compressed", "bitmask"] + (
        ["row_offsets"] if fmt == "sparse-bitmask" else []
    )
    missing = [f for f in fields if f"{prefix}.{f}" not in stored]
    if missing:
        raise ValueError(f"directory: {str(path)!r} lacks {prefix}.{missing[0]}")
    shape = [int(s) for s in stored[f"{prefix}.shape"].reshape(-1).tolist()]
    values = stored[f"{prefix}.compressed"].reshape(-1)
    bitmask = stored[f"{prefix}.bitmask"]
    if (
        len(shape) != 2
        or bitmask.dtype != torch.uint8
        or tuple(bitmask.shape)
        != (
            shape[0],
            (shape[1] + 7) // 8,
        )
    ):
        raise ValueError(
            f"directory: {str(path)!r}: {prefix}.bitmask has shape {tuple(bitmask.shape)}, "
            f"expected uint8 rows x ceil(cols / 8) for the dense shape {shape}"
        )
    keep = _unpack_rows(bitmask, *shape)
    if int(keep.sum()) != values.numel():
        raise ValueError(
            f"directory: {str(path)!r}: {prefix}.compressed holds {values.numel()} values, "
            f"the bitmask keeps {int(keep.sum())}"
        )
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    dense[keep] = values
    return dense
