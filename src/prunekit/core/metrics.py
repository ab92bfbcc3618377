"""Model cost metrics: parameters, non-zeros, dense and non-zero MACs, file sizes, latency.

Definitions follow ShrinkBench (Blalock et al. 2020): the cost of a Linear / Conv layer is its
multiply-accumulates for one example; its non-zero cost scales that by the layer's weight density
(every weight is used the same number of times); theoretical speedup = dense MACs / non-zero MACs;
compression ratio = parameters / non-zero parameters. Weight-free attention products
(``softmax(QK^T)V``) cannot be pruned and count the same in both.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "LayerCost",
    "ModelCosts",
    "count_macs",
    "count_nonzeros",
    "count_params",
    "file_sizes",
    "layer_costs",
    "measure_latency",
    "model_costs",
    "pq_indices",
]


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


def count_nonzeros(model: nn.Module) -> int:
    """Number of non-zero parameter entries (shared tensors counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += int(torch.count_nonzero(p.detach()))
    return total


@dataclass
class LayerCost:
    """Cost of one layer for one example: weights, non-zero weights, dense and non-zero MACs."""

    name: str
    kind: str
    params: int
    nonzeros: int
    dense_macs: int
    nonzero_macs: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclass
class ModelCosts:
    """Whole-model costs (ShrinkBench definitions) and the per-layer rows they sum."""

    params: int
    nonzeros: int
    dense_macs: int
    nonzero_macs: int
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Theoretical speedup: dense MACs / non-zero MACs."""
        return self.dense_macs / self.nonzero_macs if self.nonzero_macs else float("inf")

    @property
    def compression(self) -> float:
        """Compression ratio: parameters / non-zero parameters."""
        return self.params / self.nonzeros if self.nonzeros else float("inf")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "layers"}
        out["speedup"] = self.speedup
        out["compression"] = self.compression
        out["layers"] = [{**asdict(r), "sparsity": r.sparsity} for r in self.layers]
        return out


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _run(model: nn.Module, example_inputs: Any) -> None:
    if isinstance(example_inputs, dict):
        model(**example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        model(*example_inputs)
    else:
        model(example_inputs)


def layer_costs(model: nn.Module, example_inputs: Any) -> list[LayerCost]:
    """Per-layer costs of one forward pass on ``example_inputs`` (pass a batch of one example).

    Linear: ``out.numel() * in_features`` MACs; Conv: ``out.numel() * in_channels/groups *
    prod(kernel)``. Non-zero MACs = dense MACs x the fraction of non-zero weights. A final row
    ``attention`` holds weight-free attention products (scaled dot-product attention and other
    matrix products of activations), equal in both columns.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    rows: dict[str, LayerCost] = {}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, _inputs: Any, output: Tensor) -> None:
            w = module.weight.detach()
            per_out = w.shape[1] * (_prod(w.shape[2:]) if w.dim() > 2 else 1)
            dense = int(output.numel()) * int(per_out)
            nnz = int(torch.count_nonzero(w))
            nonzero = int(round(dense * nnz / w.numel())) if w.numel() else 0
            row = rows.get(name)
            if row is None:
                rows[name] = LayerCost(name, type(module).__name__, w.numel(), nnz, dense, nonzero)
            else:  # a module called several times
                row.dense_macs += dense
                row.nonzero_macs += nonzero

        return fn

    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED):
            handles.append(module.register_forward_hook(hook(name)))
    counter = _MacCounter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            _run(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = list(rows.values())
    free = counter.by_op.get("attention", 0) + counter.by_op.get("matmul", 0)
    if free:
        out.append(LayerCost("attention", "attention", 0, 0, free, free))
    return out


def model_costs(model: nn.Module, example_inputs: Any) -> ModelCosts:
    """Parameters, non-zeros, dense and non-zero MACs of ``model`` (ShrinkBench definitions)."""
    layers = layer_costs(model, example_inputs)
    return ModelCosts(
        count_params(model),
        count_nonzeros(model),
        sum(r.dense_macs for r in layers),
        sum(r.nonzero_macs for r in layers),
        layers,
    )


def file_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model saved dense (safetensors) and compressed (``prunekit.save_compressed``)."""
    from prunekit.core.serialization import save_safetensors
    from prunekit.export import save_compressed

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = os.path.join(tmp, "dense.safetensors")
        comp_path = os.path.join(tmp, "compressed.safetensors")
        save_safetensors(state, dense_path, {})
        save_compressed(state, comp_path)
        return {
            "dense_bytes": os.path.getsize(dense_path),
            "compressed_bytes": os.path.getsize(comp_path),
        }


@torch.no_grad()
def measure_latency(
    model: nn.Module, example_inputs: Any, *, repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall-clock seconds of one forward pass (eval mode, no grad) after ``warmup`` passes.

    On CUDA each pass is synchronized so the time covers the kernels, not just their launch.
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats}")
    param = next(iter(model.parameters()), None)
    cuda = param is not None and param.is_cuda
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                _run(model, example_inputs)
            times = []
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize(param.device)
                start = time.perf_counter()
                _run(model, example_inputs)
                if cuda:
                    torch.cuda.synchronize(param.device)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


def pq_indices(model: nn.Module, masks: Any = None) -> dict[str, Any] | None:
    """PQ Index (Diao et al. 2023, p=0.5, q=1) per layer and over all layers, or ``None`` when
    :mod:`prunekit.core.pqi` is unavailable: ``{"layers": {name: index}, "global": index}``."""
    try:
        from prunekit.core.pqi import pq_index_report
    except ImportError:  # optional module
        return None
    report = pq_index_report(model, masks)
    return {"layers": dict(report.layers), "global": float(report.global_index)}
