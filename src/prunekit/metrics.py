"""Model cost metrics: parameter count and multiply-accumulates of one forward pass."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


class _MacCounter(TorchFunctionMode):
    """Counts multiply-accumulates of matrix products, convolutions and attention."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.by_op: dict[str, int] = {}

    def _add(self, op: str, n: int) -> None:
        self.macs += n
        self.by_op[op] = self.by_op.get(op, 0) + n

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        # An unusual call signature costs nothing we know how to count.
        with contextlib.suppress(IndexError, AttributeError, TypeError):
            self._count(name, args, kwargs, out)
        return out

    def _count(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        if name == "linear":
            w = _arg(args, kwargs, 1, "weight")
            self._add("linear", out.numel() * int(w.shape[1]))
        elif name in ("conv1d", "conv2d", "conv3d"):
            w = _arg(args, kwargs, 1, "weight")
            self._add("conv", out.numel() * _prod(w.shape[1:]))
        elif name.startswith("conv_transpose"):
            x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
            self._add("conv", x.numel() * _prod(w.shape[1:]))
        elif name in ("matmul", "__matmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm"):
            a = args[1] if name in ("baddbmm", "addmm", "addbmm") else args[0]
            if isinstance(a, Tensor) and isinstance(out, Tensor) and a.dim() >= 1:
                self._add("matmul", out.numel() * int(a.shape[-1]))
        elif name == "scaled_dot_product_attention":
            q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
            lead = _prod(q.shape[:-2])
            lq, d = q.shape[-2], q.shape[-1]
            self._add(
                "attention", lead * lq * k.shape[-2] * d + lead * lq * k.shape[-2] * v.shape[-1]
            )
        elif name == "multi_head_attention_forward":
            q, k = args[0], args[1]
            e = int(args[3])
            batch_first_len = q.shape[0]  # (L, N, E) in the functional form
            lq, n = batch_first_len, (q.shape[1] if q.dim() == 3 else 1)
            ls = k.shape[0]
            self._add("attention_proj", n * (lq + 2 * ls) * e * e + n * lq * e * e)
            self._add("attention", 2 * n * lq * ls * e)


def count_macs(model: nn.Module, example_inputs: Any, *, by_op: bool = False) -> int | dict:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (Linear, Conv, attention).

    ``example_inputs`` is a tensor, a tuple of positional arguments or a dict of keyword
    arguments. Elementwise operations, normalisation and pooling are not counted (they are a
    small share of the cost of the models this library targets). With ``by_op=True`` a dict
    ``{"total": ..., "linear": ..., "conv": ..., ...}`` is returned instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    counter = _MacCounter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        model.train(was_training)
    if by_op:
        return {"total": counter.macs, **counter.by_op}
    return counter.macs
