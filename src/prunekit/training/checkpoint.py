"""Checkpoints without pickle: one safetensors file (tensors) with JSON metadata, written atomically.

A checkpoint holds the model's state_dict, the optimizer state, the mask set (bit-packed), the RNG
states, the GradScaler state and the iteration reached, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.masks import MaskSet
from prunekit.serialization import load_safetensors, pack_bits, save_safetensors, unpack_bits

FORMAT = "prunekit.checkpoint/1"
CHECKPOINT_NAME = "checkpoint.safetensors"


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"checkpoint: cannot store a value of type {type(value).__name__} as JSON")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    masks: MaskSet | None = None,
    scaler: Any = None,
    iteration: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint to ``path`` atomically (temp file + rename)."""
    tensors: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model/{key}"] = value.detach().cpu().clone().contiguous()
    meta: dict[str, Any] = {"format": FORMAT, "iteration": int(iteration), "extra": extra or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for idx, entry in state["state"].items():
            plain[str(idx)] = {}
            for key, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"optim/{idx}/{key}"] = value.detach().cpu().clone().contiguous()
                else:
                    plain[str(idx)][key] = _json_safe(value)
        meta["optimizer"] = {
            "param_groups": _json_safe(state["param_groups"]),
            "state": plain,
            "tensor_keys": {
                str(i): [k for k, v in e.items() if isinstance(v, Tensor)]
                for i, e in state["state"].items()
            },
        }
    if masks is not None:
        for name, mask in masks.items():
            tensors[f"mask/{name}"] = pack_bits(mask)
        meta["masks"] = {
            "order": list(masks),
            "shapes": {n: list(m.shape) for n, m in masks.items()},
        }
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
        meta["cuda_rng"] = len(torch.cuda.get_rng_state_all())
    if scaler is not None:
        meta["scaler"] = _json_safe(scaler.state_dict())
    save_safetensors(tensors, path, meta)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scaler: Any = None,
    restore_rng: bool = True,
    device: torch.device | str | None = None,
) -> tuple[int, MaskSet | None, dict[str, Any]]:
    """Restore what :func:`save_checkpoint` wrote; return ``(iteration, masks, extra)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a prunekit checkpoint or does not fit ``model``.
    """
    tensors, meta = load_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"path: {str(path)!r} is not a prunekit checkpoint ({meta.get('format')!r})"
        )
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"path: checkpoint {str(path)!r} does not fit the model: {err}") from err
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"path: checkpoint {str(path)!r} holds no optimizer state")
        opt = meta["optimizer"]
        restored: dict[Any, dict[str, Any]] = {}
        for idx, plain in opt["state"].items():
            entry = dict(plain)
            for key in opt["tensor_keys"].get(idx, []):
                entry[key] = tensors[f"optim/{idx}/{key}"]
            restored[int(idx)] = entry
        optimizer.load_state_dict({"state": restored, "param_groups": opt["param_groups"]})
    masks = None
    if "masks" in meta:
        target = device
        if target is None:
            first = next(model.parameters(), None)
            target = first.device if first is not None else "cpu"
        masks = MaskSet()
        for name in meta["masks"]["order"]:
            shape = tuple(meta["masks"]["shapes"][name])
            masks[name] = unpack_bits(tensors[f"mask/{name}"], shape).to(target)
    if restore_rng:
        torch.set_rng_state(tensors["rng/torch"])
        if torch.cuda.is_available() and meta.get("cuda_rng"):
            torch.cuda.set_rng_state_all(
                [tensors[f"rng/cuda/{i}"] for i in range(meta["cuda_rng"])]
            )
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    return int(meta["iteration"]), masks, meta.get("extra", {})


def checkpoint_file(directory: str | os.PathLike[str]) -> Path:
    """The checkpoint path inside a run directory."""
    return Path(directory) / CHECKPOINT_NAME
