"""Depth pruning: remove whole residual or transformer blocks ranked by a score.

The default score is the block influence of ShortGPT (Men et al. 2024),
``BI = 1 - cos(x_in, x_out)`` averaged over tokens (or samples): a block that barely changes its
input is the cheapest to drop. Only blocks whose output has the shape of their input (residual
blocks, transformer layers) can be dropped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.core.device import device_of
from prunekit.structured.graph import _call

__all__ = ["block_influence", "drop_blocks", "find_block_container", "prune_depth"]


def find_block_container(model: nn.Module) -> str:
    """Name of the longest ``ModuleList``/``Sequential`` whose children share one class."""
    best, best_len = None, 1
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > best_len:
            kinds = {type(c) for c in m}
            if len(kinds) == 1:
                best, best_len = name, len(m)
    if best is None:
        raise ValueError("container: no ModuleList/Sequential of repeated blocks found; name one")
    return best


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0]
    return None


@torch.no_grad()
def block_influence(model: nn.Module, example_inputs: Any, container: str | None = None) -> Tensor:
    """``1 - cos(x_in, x_out)`` of every block of ``container`` (inf where shapes differ)."""
    name = container or find_block_container(model)
    blocks = model.get_submodule(name)
    scores = torch.full((len(blocks),), float("inf"), device=device_of(blocks))
    handles = []

    def hook(i: int):
        def fn(mod, args, kwargs, output):
            x_in = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
            x_out = _first_tensor(output)
            if x_in is None or x_out is None or x_in.shape != x_out.shape:
                return
            if x_in.dim() >= 3 and x_in.dim() != 4:  # tokens: compare along the feature axis
                cos = F.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            else:  # images / vectors: one vector per sample
                cos = F.cosine_similarity(x_in.flatten(1).float(), x_out.flatten(1).float(), dim=1)
            scores[i] = 1 - cos.mean()

        return fn

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(hook(i), with_kwargs=True))
    was = model.training
    model.eval()
    try:
        _call(model, example_inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return scores


def drop_blocks(
    model: nn.Module,
    container: str,
    drop: list[int] | None = None,
    keep: list[int] | None = None,
) -> nn.Module:
    """Remove blocks of ``container`` in place (give ``drop`` or ``keep`` indices).

    Updates layer counts in ``model.config`` and ``layer_idx`` attributes (Hugging Face caches)
    and records the change so that :func:`prunekit.structured.save_pruned` can replay it.
    """
    blocks = model.get_submodule(container)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise TypeError(f"container: {container!r} is not a ModuleList or Sequential")
    n = len(blocks)
    if keep is None:
        dropped = set(drop or [])
        if any(not 0 <= i < n for i in dropped):
            raise ValueError(f"drop: indices must be in [0, {n}), got {sorted(dropped)}")
        keep = [i for i in range(n) if i not in dropped]
    if not keep:
        raise ValueError("drop: at least one block must remain")
    new = (
        type(blocks)(*[blocks[i] for i in keep])
        if isinstance(blocks, nn.Sequential)
        else (nn.ModuleList([blocks[i] for i in keep]))
    )
    parent_name, _, attr = container.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    for new_idx, block in enumerate(new):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_idx
    config = getattr(model, "config", None)
    if config is not None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(config, key, None), int) and getattr(config, key) == n:
                setattr(config, key, len(keep))
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == n:
            config.layer_types = [layer_types[i] for i in keep]
    record = dict(getattr(model, "_prunekit_depth", None) or {})
    previous = record.get(container, list(range(n)))
    record[container] = [previous[i] for i in keep] if len(previous) == n else keep
    model._prunekit_depth = record
    return model


def prune_depth(
    model: nn.Module,
    example_inputs: Any,
    n_drop: int,
    container: str | None = None,
    scores: Tensor | None = None,
) -> tuple[nn.Module, list[int]]:
    """Drop the ``n_drop`` blocks with the lowest influence; return the model and dropped indices."""
    name = container or find_block_container(model)
    if scores is None:
        scores = block_influence(model, example_inputs, name)
    n = len(model.get_submodule(name))
    if not 0 <= n_drop < n:
        raise ValueError(f"n_drop: expected 0 <= n_drop < {n}, got {n_drop}")
    finite = torch.isfinite(scores)
    if int(finite.sum()) < n_drop:
        raise ValueError(f"n_drop: only {int(finite.sum())} blocks keep their shape and can go")
    order = torch.argsort(torch.where(finite, scores, torch.full_like(scores, float("inf"))))
    dropped = sorted(order[:n_drop].tolist())
    drop_blocks(model, name, drop=dropped)
    return model, dropped
