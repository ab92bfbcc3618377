"""Sparse inference: replace masked layers by sparse kernels where a micro-benchmark says they win.

On CPU a masked ``nn.Linear`` (and a 1x1 ``nn.Conv2d``) becomes :class:`SparseLinear` /
:class:`SparseConv1x1`, which multiply with torch's CSR kernels (int32 indices, weight kept in its
natural ``(out, in)`` layout so ``y = x W^T`` is computed as ``(W x^T)^T``; one row uses the
sparse matrix-vector kernel). On CUDA, 2:4-sparse layers become
``torch.sparse.to_sparse_semi_structured`` weights. A sparse format is never assumed to be faster:
each candidate layer is timed dense and sparse at the caller's batch size (and, when
``example_inputs`` are given, the whole model is timed too) and stays dense unless sparse wins.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerDecision",
    "SparseConv1x1",
    "SparseLinear",
    "SparseReport",
    "csr_bytes_ceiling",
    "is_2_4_sparse",
    "to_sparse",
]

Timer = Callable[[nn.Module, Any], float]


def _csr_int32(weight: Tensor) -> Tensor:
    """A CSR copy of a 2-D dense tensor with int32 indices (half the index bytes of int64)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            size=csr.shape,
            device=weight.device,
        )


def _csr_matmul(weight: Tensor, rows: Tensor) -> Tensor:
    """``rows @ weight.T`` for a CSR ``weight`` and a 2-D dense ``rows``."""
    if rows.shape[0] == 1:
        # Matrix-vector has its own, faster kernel for the batch-1 case.
        return torch.mv(weight, rows[0]).unsqueeze(0)
    return torch.sparse.mm(weight, rows.t()).t()


class SparseLinear(nn.Module):
    """Inference-only ``nn.Linear`` whose weight is a CSR matrix (int32 indices)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", _csr_int32(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, layer: nn.Linear, mask: Tensor | None = None) -> SparseLinear:
        """Build from a Linear layer; ``mask`` (same shape as the weight) zeroes pruned entries."""
        weight = layer.weight.detach()
        if mask is not None:
            weight = weight * mask.to(device=weight.device, dtype=weight.dtype)
        return cls(weight, layer.bias)

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel())

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if not rows.is_contiguous():
            rows = rows.contiguous()
        y = _csr_matmul(self.weight, rows)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


class SparseConv1x1(nn.Module):
    """Inference-only 1x1, stride-1, ungrouped ``nn.Conv2d`` with a CSR weight."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_channels, self.in_channels = weight.shape[:2]
        self.register_buffer("weight", _csr_int32(weight.reshape(self.out_channels, -1)))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, mask: Tensor | None = None) -> SparseConv1x1:
        """Build from a 1x1 Conv2d; ``mask`` (same shape as the weight) zeroes pruned entries."""
        if not is_pointwise_conv(layer):
            raise ValueError(f"layer: expected a 1x1, stride-1, ungrouped Conv2d, got {layer}")
        weight = layer.weight.detach()
        if mask is not None:
            weight = weight * mask.to(device=weight.device, dtype=weight.dtype)
        return cls(weight, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        # Channels become the reduction axis: (C, N*H*W) columns, one sparse mat-mat product.
        cols = x.permute(1, 0, 2, 3).reshape(c, n * h * w)
        y = torch.sparse.mm(self.weight, cols).reshape(self.out_channels, n, h, w)
        y = y.permute(1, 0, 2, 3)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous()

    def extra_repr(self) -> str:
        nnz = int(self.weight.values().numel())
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(1, 1), nnz={nnz}"


def is_pointwise_conv(layer: nn.Module) -> bool:
    """True for a 1x1, stride-1, unpadded, undilated, ungrouped ``nn.Conv2d``."""
    return (
        isinstance(layer, nn.Conv2d)
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.stride) == (1, 1)
        and tuple(layer.dilation) == (1, 1)
        and layer.groups == 1
        and (layer.padding in ("valid", (0, 0), 0))
    )


def is_2_4_sparse(weight: Tensor) -> bool:
    """True when every group of four consecutive inputs of each row has at most two non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def csr_bytes_ceiling(density: float, value_bytes: int = 4, index_bytes: int = 4) -> float:
    """Memory-bound speed-up bound of CSR over dense: dense bytes / (values + column indices).

    Row pointers are ignored (one per row). 90% sparsity with fp32 values and int32 indices: 5x.
    """
    if density <= 0:
        return float("inf")
    return value_bytes / (density * (value_bytes + index_bytes))


@dataclass
class LayerDecision:
    """What :func:`to_sparse` did with one layer and why."""

    name: str
    kind: str  # "linear" or "conv1x1"
    shape: tuple[int, ...]
    sparsity: float
    format: str  # "dense", "csr" or "2:4"
    dense_ms: float | None = None
    sparse_ms: float | None = None
    reason: str = ""

    @property
    def speedup(self) -> float | None:
        """Measured dense / sparse time of this layer (``None`` when not timed)."""
        if not self.dense_ms or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class SparseReport:
    """Per-layer decisions of :func:`to_sparse` plus the end-to-end check when one was run."""

    device: str
    batch_size: int
    threads: int
    layers: list[LayerDecision] = field(default_factory=list)
    dense_ms: float | None = None  # whole model, when example_inputs were given
    sparse_ms: float | None = None
    reverted: bool = False  # True when the end-to-end check put every layer back

    @property
    def converted(self) -> list[str]:
        """Names of the layers that now run a sparse kernel."""
        return [d.name for d in self.layers if d.format != "dense"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for entry, decision in zip(out["layers"], self.layers):
            entry["speedup"] = decision.speedup
        return out

    def __str__(self) -> str:
        lines = [
            f"to_sparse on {self.device}, batch {self.batch_size}, {self.threads} thread(s) "
            "(measured)",
            f"{'layer':<32} {'shape':>14} {'sparsity':>8} {'dense ms':>9} {'sparse ms':>9} "
            f"{'speedup':>7}  format  reason",
        ]
        for d in self.layers:
            dense = f"{d.dense_ms:.3f}" if d.dense_ms is not None else "-"
            sparse = f"{d.sparse_ms:.3f}" if d.sparse_ms is not None else "-"
            speed = f"{d.speedup:.2f}x" if d.speedup is not None else "-"
            shape = "x".join(map(str, d.shape))
            lines.append(
                f"{d.name:<32} {shape:>14} {d.sparsity:>8.1%} {dense:>9} {sparse:>9} {speed:>7}  "
                f"{d.format:<6}  {d.reason}"
            )
        if self.dense_ms is not None and self.sparse_ms is not None:
            lines.append(
                f"end to end: dense {self.dense_ms:.3f} ms, sparse {self.sparse_ms:.3f} ms"
                + (" -> reverted to dense" if self.reverted else "")
            )
        return "\n".join(lines)


def _call(module: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def median_time(module: nn.Module, inputs: Any, *, repeats: int = 15, warmup: int = 3) -> float:
    """Median seconds of ``module(inputs)`` after ``warmup`` calls (synchronizes CUDA)."""
    cuda = any(t.is_cuda for t in _tensors(inputs))
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            _call(module, inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tensors(inputs: Any) -> list[Tensor]:
    if isinstance(inputs, Tensor):
        return [inputs]
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    if isinstance(inputs, (tuple, list)):
        return [t for t in inputs if isinstance(t, Tensor)]
    return []


def _masks_by_module(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Apply ``masks`` to ``model`` (in place) and return the Linear / Conv2d weight masks keyed by
    module name; without ``masks`` the non-zeros of each weight are the mask."""
    modules = dict(model.named_modules())
    if masks is None:
        return {
            name: module.weight.detach() != 0
            for name, module in modules.items()
            if isinstance(module, (nn.Linear, nn.Conv2d))
        }
    params = dict(model.named_parameters())
    out: dict[str, Tensor] = {}
    for key, mask in masks.items():
        param = params.get(key)
        if param is None:
            raise ValueError(f"masks: {key!r} is not a parameter of the model")
        if tuple(mask.shape) != tuple(param.shape):
            raise ValueError(
                f"masks: {key!r} has shape {tuple(mask.shape)}, the parameter has "
                f"{tuple(param.shape)}"
            )
        keep = mask.to(device=param.device, dtype=torch.bool)
        with torch.no_grad():  # what stays dense must compute what the masked model computes
            param.mul_(keep.to(param.dtype))
        owner, _, leaf = key.rpartition(".")
        if leaf == "weight" and isinstance(modules.get(owner), (nn.Linear, nn.Conv2d)):
            out[owner] = keep
    return out


def _record_inputs(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, Tensor]:
    """One forward pass recording the input each named layer receives."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, args[0].detach())

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _semi_structured_linear(layer: nn.Linear, mask: Tensor, backend: str) -> nn.Linear:
    """A copy of ``layer`` whose weight is a 2:4 semi-structured tensor (``backend`` kernel)."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    new = copy.deepcopy(layer)
    weight = (layer.weight.detach() * mask.to(layer.weight.dtype)).contiguous()
    before = SparseSemiStructuredTensor._FORCE_CUTLASS  # a class-wide switch: restore it
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        new.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = before
    return new


def to_sparse(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    *,
    example_inputs: Any = None,
    min_sparsity: float = 0.5,
    min_gain: float = 1.05,
    include_conv: bool = True,
    inplace: bool = False,
    timer: Timer | None = None,
) -> tuple[nn.Module, SparseReport]:
    """Replace masked layers by sparse modules where that is measured to be faster.

    ``masks`` maps parameter names (``"fc.weight"``) to boolean keep-masks, e.g. a
    :class:`~prunekit.core.masks.MaskSet`; without it the zeros of the weights are the mask. Each
    Linear (and, with ``include_conv``, 1x1 Conv2d) with at least ``min_sparsity`` zeros is timed
    dense and sparse on an input of ``batch_size`` rows (or the input it receives on
    ``example_inputs``) and converted only when sparse is ``min_gain`` times faster. On
    ``device="cpu"`` the sparse module is CSR (:class:`SparseLinear`); on ``"cuda"`` a 2:4-sparse
    Linear gets a ``to_sparse_semi_structured`` weight (each available backend is tried). With
    ``example_inputs`` the whole model is also timed and every layer reverts to dense if the
    converted model is not faster. ``timer(module, inputs) -> seconds`` replaces the clock (the
    default is the median of repeats after warm-up).

    Returns ``(model, report)``; the model is a converted copy unless ``inplace``. Sparse modules
    are for inference (no gradients through the weight).
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity: expected a fraction in [0, 1], got {min_sparsity!r}")
    timer = timer or median_time
    if not inplace:
        model = copy.deepcopy(model)
    model = model.to(device).eval()
    report = SparseReport(str(device), batch_size, torch.get_num_threads())
    layer_masks = _masks_by_module(model, masks)
    modules = dict(model.named_modules())
    recorded = (
        _record_inputs(model, list(layer_masks), example_inputs)
        if example_inputs is not None
        else {}
    )
    originals: dict[str, nn.Module] = {}
    for name, mask in layer_masks.items():
        layer = modules[name]
        if isinstance(layer, nn.Conv2d) and not (include_conv and device.type == "cpu"):
            continue
        if isinstance(layer, nn.Conv2d) and not is_pointwise_conv(layer):
            continue
        kind = "linear" if isinstance(layer, nn.Linear) else "conv1x1"
        sparsity = 1.0 - float(mask.count_nonzero()) / mask.numel()
        decision = LayerDecision(name, kind, tuple(layer.weight.shape), sparsity, "dense")
        report.layers.append(decision)
        if example_inputs is not None and name not in recorded:
            decision.reason = "not reached by example_inputs"
            continue
        if sparsity < min_sparsity:
            decision.reason = f"sparsity below min_sparsity={min_sparsity:g}"
            continue
        inputs = recorded.get(name)
        if inputs is None:
            shape = (batch_size, layer.in_features) if kind == "linear" else None
            if shape is None:
                decision.reason = "1x1 conv needs example_inputs for its spatial size"
                continue
            inputs = torch.randn(shape, device=device, dtype=layer.weight.dtype)
        candidates = _candidates(layer, mask, kind, device)
        if isinstance(candidates, str):
            decision.reason = candidates
            continue
        decision.dense_ms = timer(layer, inputs) * 1e3
        best: tuple[float, str, nn.Module] | None = None
        failures = []
        for fmt, build in candidates:
            try:
                module = build()
                ms = timer(module, inputs) * 1e3
            except Exception as err:  # a backend refusing this shape/dtype/GPU: try the next
                failures.append(f"{fmt}: {str(err).splitlines()[0][:80]}")
                continue
            if best is None or ms < best[0]:
                best = (ms, fmt, module)
        if best is None:
            decision.reason = "; ".join(failures) or "no sparse kernel"
            continue
        decision.sparse_ms = best[0]
        if decision.dense_ms < min_gain * best[0]:
            decision.reason = (
                "dense is faster" if decision.dense_ms <= best[0] else "gain too small"
            )
            continue
        decision.format = "2:4" if best[1].startswith("2:4") else "csr"
        decision.reason = f"sparse is faster ({best[1]})"
        originals[name] = layer
        _set_module(model, name, best[2])
    if example_inputs is not None and originals:
        _end_to_end_check(model, originals, example_inputs, timer, report)
    return model, report


def _candidates(
    layer: nn.Module, mask: Tensor, kind: str, device: torch.device
) -> list[tuple[str, Callable[[], nn.Module]]] | str:
    """The sparse builds worth timing for ``layer``, or why there are none."""
    if device.type == "cpu":
        cls = SparseLinear if kind == "linear" else SparseConv1x1
        return [("csr", lambda: cls.from_dense(layer, mask))]
    if not is_2_4_sparse(mask):
        return "mask is not 2:4 (the CUDA path converts 2:4 layers only)"
    if layer.weight.dtype not in (torch.float16, torch.bfloat16, torch.int8):
        return f"2:4 kernels need fp16/bf16/int8 weights, got {layer.weight.dtype}"
    return [
        (f"2:4 {backend}", lambda b=backend: _semi_structured_linear(layer, mask, b))
        for backend in ("cusparselt", "cutlass")
    ]


def _end_to_end_check(
    model: nn.Module,
    originals: dict[str, nn.Module],
    example_inputs: Any,
    timer: Timer,
    report: SparseReport,
) -> None:
    """Time the converted model against the dense one; put every layer back if not faster."""
    converted = {name: model.get_submodule(name) for name in originals}
    for name, dense in originals.items():
        _set_module(model, name, dense)
    report.dense_ms = timer(model, example_inputs) * 1e3
    for name, sparse in converted.items():
        _set_module(model, name, sparse)
    report.sparse_ms = timer(model, example_inputs) * 1e3
    if report.sparse_ms >= report.dense_ms:
        for name, dense in originals.items():
            _set_module(model, name, dense)
        report.reverted = True
        for decision in report.layers:
            if decision.format != "dense":
                decision.format = "dense"
                decision.reason = "reverted: the converted model was not faster end to end"
