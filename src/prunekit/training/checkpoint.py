"""Checkpoints without pickle: one safetensors file (tensors) with JSON metadata, written atomically.

A checkpoint holds the model's state_dict, the optimizer state, the mask set (bit-packed), the RNG
states, the GradScaler state and the iteration reached, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core import stamps
from prunekit.core.errors import FileFormatError
from prunekit.core.masks import GRADIENT_MASKING_SAFE, MaskSet
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
    extra = dict(extra or {})
    stamp = stamps.active()
    if stamp is not None:
        extra[stamps.STAMP_KEY] = stamp.to_json()
    meta: dict[str, Any] = {"format": FORMAT, "iteration": int(iteration), "extra": extra}
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
    check_extra: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, MaskSet | None, dict[str, Any]]:
    """Restore what :func:`save_checkpoint` wrote; return ``(iteration, masks, extra)``.

    The load is transactional: the whole file is read and checked against ``model`` and
    ``optimizer`` (names, shapes, dtypes, optimizer state present and matching its parameter
    groups, masks, RNG state) before anything is copied, so on error both are left untouched.
    When a stage stamp is active (:func:`prunekit.core.stamps.stamped`), a checkpoint written under another config or
    stage is refused with :class:`~prunekit.core.errors.StaleFileError`.
    ``check_extra(extra)`` runs with those checks: a caller's own conditions on ``extra`` (e.g.
    the seed) also fail without touching anything.

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: the file is not a prunekit checkpoint, is corrupt, or does not fit
            ``model`` / ``optimizer`` (a ``ValueError``; the message names ``path``).
    """
    tensors, meta = load_safetensors(path)
    expect_format(meta, FORMAT, path, "checkpoint")
    iteration = meta_entry(meta, "iteration", int, path)
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise FileFormatError(path, "metadata key 'extra': expected a JSON object")
    stamps.check(extra.get(stamps.STAMP_KEY), path)
    if check_extra is not None:
        check_extra(extra)
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    check_state_fits(model, state, path)
    optim_state = _read_optimizer(tensors, meta, optimizer, path) if optimizer is not None else None
    masks = _read_masks(tensors, meta, model, path, device)
    rng = None
    if restore_rng:
        rng = tensor_entry(tensors, "rng/torch", path, dtype=torch.uint8)
        if rng.numel() != torch.get_rng_state().numel():
            raise FileFormatError(path, f"tensor 'rng/torch' holds {rng.numel()} bytes, "
                                        f"expected {torch.get_rng_state().numel()}")  # fmt: skip
    cuda_rng: list[Tensor] = []
    if restore_rng and torch.cuda.is_available() and meta.get("cuda_rng"):
        count = meta_entry(meta, "cuda_rng", int, path)
        cuda_rng = [tensor_entry(tensors, f"rng/cuda/{i}", path, dtype=torch.uint8)
                    for i in range(count)]  # fmt: skip
    scaler_state = None
    if scaler is not None and "scaler" in meta:
        scaler_state = meta_entry(meta, "scaler", dict, path)

    # Everything checked: copy.
    model.load_state_dict(state, strict=True)
    if optimizer is not None and optim_state is not None:
        optimizer.load_state_dict(optim_state)
    if rng is not None:
        torch.set_rng_state(rng)
        if cuda_rng:
            torch.cuda.set_rng_state_all(cuda_rng)
    if scaler_state is not None:
        scaler.load_state_dict(scaler_state)
    return iteration, masks, extra


def _read_optimizer(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    path: str | os.PathLike[str],
) -> dict[str, Any]:
    """The optimizer state_dict stored in the file, checked against ``optimizer``."""
    if "optimizer" not in meta:
        raise FileFormatError(path, "holds no optimizer state (saved without an optimizer?)")
    opt = meta_entry(meta, "optimizer", dict, path)
    groups = meta_entry(opt, "param_groups", list, path)
    plain_state = meta_entry(opt, "state", dict, path)
    tensor_keys = meta_entry(opt, "tensor_keys", dict, path)
    own = optimizer.state_dict()["param_groups"]
    if len(groups) != len(own) or not all(isinstance(g, dict) for g in groups):
        raise FileFormatError(
            path,
            f"optimizer state has {len(groups)} parameter groups, the optimizer has {len(own)}",
        )
    for i, (saved, mine) in enumerate(zip(groups, own)):
        params = saved.get("params")
        if not isinstance(params, list) or len(params) != len(mine["params"]):
            count = len(params) if isinstance(params, list) else params
            raise FileFormatError(
                path,
                f"optimizer parameter group {i} holds {count} parameters, the optimizer's "
                f"holds {len(mine['params'])}",
            )
    saved_ids = [p for g in groups for p in g["params"]]
    if len(set(saved_ids)) != len(saved_ids) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in saved_ids
    ):
        raise FileFormatError(path, "optimizer parameter ids are not distinct integers")
    # Saved ids map to the optimizer's parameters by position, as load_state_dict maps them.
    position = {pid: i for i, pid in enumerate(p for g in groups for p in g["params"])}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    # PyTorch's own optimizers keep every non-scalar state tensor shaped like its parameter;
    # others (e.g. Frank-Wolfe's) may not, so only theirs are shape-checked here.
    shaped_like_params = type(optimizer) in GRADIENT_MASKING_SAFE
    restored: dict[Any, dict[str, Any]] = {}
    for idx, plain in plain_state.items():
        if not isinstance(plain, dict) or not idx.isdigit() or int(idx) not in position:
            raise FileFormatError(path, f"optimizer state {idx!r} names no parameter")
        entry = dict(plain)
        keys = tensor_keys.get(idx, [])
        if not isinstance(keys, list):
            raise FileFormatError(path, f"optimizer tensor_keys of {idx!r}: expected a list")
        param = flat[position[int(idx)]]
        for key in keys:
            value = tensor_entry(tensors, f"optim/{idx}/{key}", path)
            if (
                shaped_like_params
                and value.dim() > 0
                and value.is_floating_point()
                and tuple(value.shape) != tuple(param.shape)
            ):
                raise FileFormatError(
                    path,
                    f"optimizer state {idx}/{key} has shape {list(value.shape)}, its "
                    f"parameter has {list(param.shape)}",
                )
            entry[key] = value
        restored[int(idx)] = entry
    return {"state": restored, "param_groups": groups}


def _read_masks(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    model: nn.Module,
    path: str | os.PathLike[str],
    device: torch.device | str | None,
) -> MaskSet | None:
    """The checkpoint's masks, checked against ``model``'s parameters."""
    if "masks" not in meta:
        return None
    info = meta_entry(meta, "masks", dict, path)
    order = meta_entry(info, "order", list, path)
    shapes = meta_entry(info, "shapes", dict, path)
    params = dict(model.named_parameters())
    target = device
    if target is None:
        first = next(model.parameters(), None)
        target = first.device if first is not None else "cpu"
    masks = MaskSet()
    for name in order:
        if not isinstance(name, str) or name not in shapes:
            raise FileFormatError(path, f"mask {name!r} has no shape in the metadata")
        shape = shape_entry(shapes[name], f"shape of mask {name!r}", path)
        if name not in params or tuple(params[name].shape) != shape:
            raise FileFormatError(path, f"mask {name!r} {list(shape)} does not fit the model")
        bits = tensor_entry(tensors, f"mask/{name}", path, dtype=torch.uint8,
                            numel=(math.prod(shape) + 7) // 8)  # fmt: skip
        masks[name] = unpack_bits(bits, shape).to(target)
    return masks


def checkpoint_file(directory: str | os.PathLike[str]) -> Path:
    """The checkpoint path inside a run directory."""
    return Path(directory) / CHECKPOINT_NAME
