"""Helpers for DistributedDataParallel runs (``torchrun``; gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from prunekit.core.masks import MaskSet


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Initialise the process group from ``torchrun``'s environment variables, if present.

    Returns ``(rank, world_size)``. Without ``WORLD_SIZE`` in the environment nothing happens.
    The backend defaults to NCCL with CUDA and gloo otherwise.
    """
    if is_distributed() or "WORLD_SIZE" not in os.environ:
        return dist_info()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist_info()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks (a copy; identity outside a process group)."""
    out = tensor.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_masks(masks: MaskSet, src: int = 0) -> MaskSet:
    """Overwrite every rank's masks with rank ``src``'s, in place (masks must have equal shapes)."""
    if not is_distributed():
        return masks
    for name in sorted(masks):
        as_bytes = masks[name].to(torch.uint8)
        dist.broadcast(as_bytes, src=src)
        masks[name] = as_bytes.bool()
    return masks


def masks_identical_across_ranks(masks: MaskSet) -> bool:
    """True when every rank holds exactly the same masks (checked by comparing to rank 0)."""
    if not is_distributed():
        return True
    # NCCL reduces CUDA tensors only; gloo reduces CPU ones
    on = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    same = torch.ones(1, device=on)
    for name in sorted(masks):
        mine = masks[name].to(torch.uint8)
        ref = mine.clone()
        dist.broadcast(ref, src=0)
        if not torch.equal(mine.cpu(), ref.cpu()):
            same.zero_()
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())
