"""Dependency graph of coupled channels, built by tracing one real forward pass.

Every torch function called during the forward is intercepted (``TorchFunctionMode``). Each tensor
that carries channels gets an *id tensor* of the same shape whose entries name channel elements;
elements are merged in a union-find whenever an operation couples them (an addition couples the
channels it adds, a Linear couples its input features with its weight columns, attention couples
everything inside a head). Shape operations (view, flatten, cat, split, pad, channel shuffle, ...)
are applied to the id tensor itself, so their index mapping is exact without per-op bookkeeping.

Every parameter axis that must shrink with a channel is recorded as a *parameter dimension*: a
vector of element ids, one per index along that axis. After tracing, the connected components of
the union-find are the units that can be removed together (see :mod:`prunekit.structured.groups`).

Unlike ``torch.fx`` symbolic tracing this runs the model on concrete inputs, so Python control flow,
Hugging Face attention dispatch and shape arithmetic all work; an operation on a channel-carrying
tensor that no rule covers raises :class:`UnsupportedOperationError` naming it and the module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from prunekit.structured.ops import (
    CONSTANT,
    CONV,
    CONV_T,
    ELEMENTWISE,
    MATMUL,
    REDUCTION,
    SPATIAL,
    SPLITS,
    STRUCTURAL,
)

__all__ = ["DependencyGraph", "UnsupportedOperationError", "build_graph"]


class UnsupportedOperationError(RuntimeError):
    """A channel-carrying tensor went through an operation the tracer has no rule for."""


_PAIR_BASE = 1 << 31


def _compact(*ts: Tensor) -> list[Tensor]:
    """Drop the broadcast (stride-0) dimensions shared by same-shaped id tensors."""
    out = list(ts)
    for d in range(ts[0].dim()):
        if ts[0].shape[d] > 1 and all(t.stride(d) == 0 for t in ts):
            out = [t.narrow(d, 0, 1) for t in out]
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, n: int) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb

    def union_pairs(self, a: Tensor, b: Tensor) -> None:
        """Union ``a[i]`` with ``b[i]`` wherever both are element ids (>= 0)."""
        a, b = _compact(*torch.broadcast_tensors(a, b))
        keep = (a >= 0) & (b >= 0) & (a != b)
        if not bool(keep.any()):
            return
        # Encode each pair in one int64 so that a 1-D unique removes the (many) repeats quickly.
        code = torch.unique(a[keep] * _PAIR_BASE + b[keep])
        for c in code.tolist():
            self.union(c // _PAIR_BASE, c % _PAIR_BASE)

    def union_all(self, ids: Tensor) -> None:
        vals = torch.unique(ids[ids >= 0]).tolist()
        for v in vals[1:]:
            self.union(vals[0], v)

    def roots(self, ids: Tensor) -> Tensor:
        return torch.tensor([self.find(i) for i in ids.reshape(-1).tolist()], dtype=torch.long)


@dataclass
class ParamDim:
    """One axis of a parameter or buffer whose indices follow channel elements."""

    name: str
    axis: int
    ids: Tensor  # element id per index along ``axis``
    producer: bool = False  # the axis holds output channels of an operation (not only a consumer)


@dataclass
class DependencyGraph:
    """Channel elements, their union-find and the parameter dimensions bound to them.

    Build with :func:`build_graph`; consume through :func:`prunekit.structured.groups.find_groups`.
    """

    model: nn.Module
    uf: _UnionFind = field(default_factory=_UnionFind)
    dims: dict[tuple[str, int], ParamDim] = field(default_factory=dict)
    frozen: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)  # frozen element -> why (first reason)
    full_params: dict[str, Tensor] = field(default_factory=dict)
    multihead: dict[str, nn.MultiheadAttention] = field(default_factory=dict)
    ops_seen: int = 0

    # ---- element bookkeeping ----
    def param_dim(self, name: str, axis: int, size: int, producer: bool = False) -> Tensor:
        key = (name, axis)
        if key not in self.dims:
            self.dims[key] = ParamDim(name, axis, self.uf.make(size), producer)
        elif producer:
            self.dims[key].producer = True
        dim = self.dims[key]
        if dim.ids.numel() != size:
            raise UnsupportedOperationError(
                f"parameter {name!r} is used with inconsistent sizes along axis {axis}"
            )
        return dim.ids

    def freeze(self, ids: Tensor, reason: str = "fixed by an operation") -> None:
        """Mark elements as unremovable; ``reason`` is reported when a group cannot shrink."""
        new = torch.unique(ids[ids >= 0]).tolist()
        self.frozen.update(new)
        for i in new:
            self.reasons.setdefault(i, reason)

    def frozen_roots(self) -> set[int]:
        return {self.uf.find(i) for i in self.frozen}

    def frozen_reasons(self) -> dict[int, list[str]]:
        """Per frozen component root, the distinct reasons its elements were frozen."""
        out: dict[int, list[str]] = {}
        for i in self.frozen:
            why = self.reasons.get(i, "fixed by an operation")
            found = out.setdefault(self.uf.find(i), [])
            if why not in found:
                found.append(why)
        return out


def _fullname(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a tensor property such as ``w.T``: name the property
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


_TRANSPOSES = {"T", "t", "mT", "transpose", "swapaxes", "swapdims"}


class _Tracer(TorchFunctionMode):
    def __init__(self, graph: DependencyGraph, param_names: dict[int, str]) -> None:
        super().__init__()
        self.g = graph
        self.param_names = param_names
        self.ann: dict[int, Tensor] = {}
        self.keep: list[Tensor] = []  # hold traced tensors so their ids are not reused
        self.busy = False
        self.leaf_depth = 0
        self.leaf_owner: nn.Module | None = None
        self.module_stack: list[str] = []
        self.param_by_name: dict[str, Tensor] = {}
        self.transposed: dict[int, str] = {}  # id of ``W.T`` for a 2-D parameter W -> W's name

    # ---- annotations ----
    def ids_of(self, t: Any) -> Tensor | None:
        if not isinstance(t, Tensor):
            return None
        found = self.ann.get(id(t))
        if found is not None:
            return found
        name = self.param_names.get(id(t))
        if name is not None and isinstance(t, nn.Parameter) and t.is_floating_point():
            ids = self.g.full_params.get(name)
            if ids is None:
                ids = self.g.uf.make(t.numel()).reshape(t.shape)
                self.g.full_params[name] = ids
            return ids
        return None

    def _known(self, t: Tensor) -> bool:
        """Whether ``t`` carries channels (traced, or a model parameter), creating nothing."""
        return id(t) in self.ann or (isinstance(t, nn.Parameter) and id(t) in self.param_names)

    def set_ids(self, t: Tensor, ids: Tensor) -> None:
        if tuple(ids.shape) != tuple(t.shape):
            ids = ids.expand(t.shape) if ids.dim() == t.dim() else ids.reshape(t.shape)
        self.ann[id(t)] = ids
        self.keep.append(t)

    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "<model>"

    # ---- dispatch ----
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy or self.leaf_depth:
            return out
        self.busy = True
        try:
            self.g.ops_seen += 1
            self.on_op(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    def on_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = _fullname(func)
        if name == "__setitem__":
            return self.setitem(args)
        if name in _TRANSPOSES and args and self._transposed_param(args[0], out):
            return
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        if not any(t.is_floating_point() or t.is_complex() for t in outs):
            return
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        # Checking must not create per-element ids for weights: rules bind them per axis.
        if not any(self._known(t) for t in ins if t.is_floating_point()):
            return
        if name in ("max", "min") and len(args) > 1 and isinstance(args[1], Tensor):
            return self.elementwise(ins, outs)  # torch.max(a, b) is elementwise
        if name in CONSTANT:
            if name.endswith("_like") and outs and tuple(outs[0].shape) == tuple(ins[0].shape):
                ids = self.ids_of(ins[0])  # its shape follows the template tensor
                if ids is not None:
                    self.set_ids(outs[0], ids)
            return
        if name in STRUCTURAL:
            return self.structural(func, name, args, kwargs, out)
        if name in ELEMENTWISE:
            return self.elementwise(ins, outs)
        if name in REDUCTION:
            return self.reduction(name, args, kwargs, out)
        if name in SPATIAL:
            return self.spatial(args[0] if args else kwargs["input"], outs)
        if name == "linear":
            return self.linear(*_bind(args, kwargs, ("input", "weight", "bias")), out)
        if name in CONV:
            return self.conv(*_bind(args, kwargs, _CONV_ARGS), out, transposed=False)
        if name in CONV_T:
            return self.conv(*_bind(args, kwargs, _CONVT_ARGS), out, transposed=True)
        if name == "embedding":
            return self.embedding(*_bind(args, kwargs, ("input", "weight")), out)
        if name in ("layer_norm", "rms_norm"):
            a = _bind(args, kwargs, ("input", "normalized_shape", "weight", "bias"))
            return self.norm(*a, out)
        if name == "batch_norm":
            a = _bind(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias"))
            return self.batch_norm(a[0], a[1:], out)
        if name == "group_norm":
            a = _bind(args, kwargs, ("input", "num_groups", "weight", "bias"))
            return self.group_norm(*a, out)
        if name in MATMUL:
            return self.matmul(name, args, kwargs, out)
        if name == "scaled_dot_product_attention":
            return self.sdpa(args, kwargs, out)
        if name == "einsum":
            raise UnsupportedOperationError(
                f"torch.einsum on a channel-carrying tensor in module {self.where()!r} is not "
                "supported; rewrite it with matmul or exclude the module from pruning"
            )
        raise UnsupportedOperationError(
            f"operation {name!r} on a channel-carrying tensor in module {self.where()!r} has no "
            "channel rule; structured pruning cannot trace this model (pass the module in "
            "`ignore` or rewrite the operation)"
        )

    def _transposed_param(self, w: Any, out: Any) -> bool:
        """``W.T`` of a 2-D parameter: remember it so ``x @ W.T`` is bound as a linear layer."""
        name = self._name(w)
        if name is None or not isinstance(w, nn.Parameter) or w.dim() != 2:
            return False
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(w.shape[::-1]):
            return False
        self.transposed[id(out)] = name
        self.keep.append(out)
        return True

    # ---- rules ----
    def _sub(self, x: Any) -> Any:
        if isinstance(x, Tensor) and (x.is_floating_point() or x.is_complex()):
            ids = self.ids_of(x)
            return ids.contiguous() if ids is not None else torch.full(x.shape, -1)
        if isinstance(x, Tensor) and x.device.type != "cpu":
            return x.cpu()  # index tensors meet the (CPU) id tensors
        return x

    def structural(self, func, name, args, kwargs, out) -> None:
        sargs = tree_map(self._sub, args)
        skw = tree_map(self._sub, kwargs)
        if name == "pad":
            ids_out = _pad_ids(sargs[0], sargs[1] if len(sargs) > 1 else skw["pad"])
        elif name in ("view", "view_as"):
            fn = torch.Tensor.reshape if name == "view" else torch.Tensor.reshape_as
            ids_out = fn(*sargs, **skw)
        elif name in ("channel_shuffle", "native_channel_shuffle"):
            x, groups = sargs[0], sargs[1] if len(sargs) > 1 else skw["groups"]
            b, c = x.shape[:2]
            split = x.reshape(b, groups, c // groups, *x.shape[2:])
            # `groups` is fixed: local index i of every group goes together
            self.g.uf.union_pairs(split, split[:, :1])
            ids_out = split.transpose(1, 2).reshape(x.shape)
        else:
            ids_out = func(*sargs, **skw)
        if name in ("view", "reshape") and isinstance(ids_out, Tensor):
            self._couple_inferred_split(args, ids_out)
        if name in SPLITS and isinstance(ids_out, (tuple, list)) and len(ids_out) > 1:
            self._couple_pieces(name, args, kwargs, list(ids_out))
        for t, ids in zip(_tensors(out), _tensors(ids_out)):
            if t.is_floating_point():
                self.set_ids(t, ids)

    def _couple_inferred_split(self, args: tuple, ids_out: Tensor) -> None:
        """``view(..., -1, k)`` splitting a channel axis: the ``-1`` axis is the one that shrinks.

        The other axes of the split keep their (literal or attribute) sizes, so all elements that
        share an index along the inferred axis are removed together (whole heads for
        ``view(b, t, -1, head_dim)``, the same local index of each group for a hand-written
        channel shuffle ``view(n, g, -1, h, w)``).
        """
        x = args[0]
        sizes = list(args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
            sizes = list(sizes[0])
        if -1 not in sizes or not isinstance(x, Tensor):
            return
        p = sizes.index(-1)
        for in_dims, out_dims in _view_groups(tuple(x.shape), tuple(ids_out.shape)):
            if len(in_dims) == 1 and len(out_dims) > 1 and p in out_dims:
                moved = ids_out.movedim(p, 0).reshape(ids_out.shape[p], -1)
                if bool((moved != moved[:, :1]).any()):
                    self.g.uf.union_pairs(moved, moved[:, :1])

    def _couple_pieces(self, name: str, args: tuple, kwargs: dict, pieces: list[Tensor]) -> None:
        """Pieces of a split must shrink alike (their sizes come from one number)."""
        x = args[0]
        if name == "unbind":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        else:
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        dim = dim % x.dim()
        ids = self.ids_of(x)
        if ids is None or ids.shape[dim] < 2 or not bool((ids != ids.narrow(dim, 0, 1)).any()):
            return  # split along positions, not channels
        if name == "unbind" or len({p.shape[dim] for p in pieces}) == 1:
            for p in pieces[1:]:
                self.g.uf.union_pairs(p, pieces[0])
        else:
            # Pieces of unequal, literal sizes cannot follow pruning.
            for p in pieces:
                self.g.freeze(p, "split into pieces of unequal literal sizes")

    def _head_rows(self, ids: Tensor) -> bool:
        """Whether the last axis of ``ids`` is one slice (a head) of a wider producer axis.

        True for ``view(b, t, heads, head_dim)`` of a projection's output: the rows over the
        leading axes are distinct, contiguous pieces of one layer's output channels. A vector
        over ``head_dim`` applied to every row (Qwen3's ``q_norm``) is then shared by the heads.
        """
        if ids.dim() < 3 or ids.shape[-1] < 1:
            return False
        rows = _compact(ids)[0].reshape(-1, ids.shape[-1])
        if rows.shape[0] < 2:
            return False
        rows = torch.unique(rows, dim=0)
        if rows.shape[0] < 2 or bool((rows < 0).any()):
            return False
        if rows.shape[1] > 1 and not bool((rows[:, 1:] - rows[:, :-1] == 1).all()):
            return False
        starts = torch.sort(rows[:, 0]).values
        if not bool((starts[1:] - starts[:-1] == rows.shape[1]).all()):
            return False
        lo, hi = int(starts[0]), int(starts[-1]) + rows.shape[1] - 1
        return any(
            d.producer and int(d.ids[0]) <= lo and hi <= int(d.ids[-1])
            for d in self.g.dims.values()
            if d.ids.numel() >= hi - lo + 1
        )

    def _shared_over_heads(self, ins: list[Tensor]) -> list[Tensor]:
        """Operands that are vectors over ``head_dim`` broadcast over heads (not coupled)."""
        tracked = [(t, self.ids_of(t)) for t in ins if t.is_floating_point()]
        tracked = [(t, i) for t, i in tracked if i is not None]
        if len(tracked) < 2:
            return []
        small = [t for t, i in tracked if t.numel() == t.shape[-1] and t.dim() <= 2]
        if not small or not any(t.dim() >= 3 and self._head_rows(i) for t, i in tracked):
            return []
        return small

    def elementwise(self, ins: list[Tensor], outs: list[Tensor]) -> None:
        out = outs[0]
        shape = out.shape
        acc: Tensor | None = None
        partial: list[Tensor] = []
        shared = self._shared_over_heads(ins)
        for t in shared:
            # One vector for every head: heads stay independent and the vector keeps its size.
            self.g.freeze(self.ids_of(t), "a head_dim vector shared by all heads")
        for t in ins:
            if not t.is_floating_point() or any(t is s for s in shared):
                continue
            ids = self.ids_of(t)
            if ids is None:
                continue
            try:
                ids_b = ids.expand(shape) if ids.dim() <= len(shape) else None
            except RuntimeError:
                ids_b = None
            if ids_b is None:
                raise UnsupportedOperationError(
                    f"elementwise operation in module {self.where()!r} broadcasts a "
                    "channel-carrying tensor to an incompatible shape"
                )
            if bool((ids < 0).any()):
                partial.append(ids_b)
            if acc is not None:
                acc, ids_b = _compact(acc, ids_b)
            if acc is None:
                acc = ids_b
            else:
                self.g.uf.union_pairs(acc, ids_b)
                acc = torch.where(acc >= 0, acc, ids_b)
        if acc is None:
            return
        # A constant region (zero padding) next to a channel makes that channel unprunable.
        acc = acc.expand(shape)
        for ids_b in partial:
            self.g.freeze(
                acc[(ids_b < 0) & (acc >= 0)], "combined with a constant (zero-padded) region"
            )
        for t in outs:
            if t.shape == shape and t.is_floating_point():
                self.set_ids(t, acc)

    def setitem(self, args: tuple) -> None:
        """``x[idx] = value``: the written positions take the value's channel identity."""
        x, idx, value = args[0], args[1], args[2] if len(args) > 2 else None
        ids = self.ids_of(x)
        v_ids = self.ids_of(value) if isinstance(value, Tensor) else None
        if ids is None:
            if v_ids is not None:
                # written into a constant whose size cannot follow
                self.g.freeze(v_ids, "written into a constant tensor")
            return
        new = ids.clone()
        new[tree_map(self._sub, idx)] = v_ids if v_ids is not None else -1
        self.set_ids(x, new)

    def reduction(self, name, args, kwargs, out) -> None:
        x = args[0] if args else kwargs["input"]
        ids = self.ids_of(x)
        # norm(p, dim): the second positional argument of a norm is its order, not a dim
        pos = 2 if name in ("norm", "linalg_vector_norm", "vector_norm") else 1
        dim = kwargs.get("dim", args[pos] if len(args) > pos else None)
        if isinstance(dim, bool) or (dim is not None and not isinstance(dim, (int, tuple, list))):
            dim = None
        result = _tensors(out)
        if not result or not result[0].is_floating_point() or ids is None:
            return
        r = result[0]
        if dim is None:
            dims = list(range(x.dim()))
        else:
            dims = [d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)]
        varying = any(bool((ids != ids.narrow(d, 0, 1)).any()) for d in dims if ids.shape[d] > 1)
        if varying:
            return  # the reduction mixes channels: the result carries no channel identity
        red = ids
        for d in sorted(dims, reverse=True):
            red = red.narrow(d, 0, 1)
        if r.dim() != red.dim():
            for d in sorted(dims, reverse=True):
                red = red.squeeze(d)
        if red.dim() == r.dim():
            for t in result:
                if t.is_floating_point() and t.shape == r.shape:
                    self.set_ids(t, red.expand(r.shape))

    def spatial(self, x: Tensor, outs: list[Tensor]) -> None:
        ids = self.ids_of(x)
        if ids is None:
            return
        lead = 2 if x.dim() >= 3 else 1
        flat = ids.reshape(*ids.shape[:lead], -1)
        if bool((flat != flat[..., :1]).any()):
            raise UnsupportedOperationError(
                f"pooling/resampling in module {self.where()!r} mixes channel elements"
            )
        base = flat[..., 0]
        for t in outs:
            if t.is_floating_point() and t.dim() == x.dim():
                self.set_ids(
                    t, base.reshape(*base.shape, *([1] * (t.dim() - lead))).expand(t.shape)
                )

    def _consume(self, x_ids: Tensor | None, axis: int, elems: Tensor) -> None:
        """Bind the channels of an input (along ``axis``) to a layer's input elements."""
        if x_ids is None:
            self.g.freeze(elems, f"fed by a constant input in {self.where()!r}")
            return
        moved = x_ids.movedim(axis, -1).reshape(-1, x_ids.shape[axis])
        self.g.uf.union_pairs(moved, elems.unsqueeze(0))
        self.g.freeze(elems[(moved < 0).any(0)], "constant (padded) input channels")

    def _name(self, p: Tensor | None) -> str | None:
        return None if p is None else self.param_names.get(id(p))

    def linear(self, x: Tensor, w: Tensor, b: Tensor | None, out: Tensor) -> None:
        wn = self._name(w)
        if wn is None:
            raise UnsupportedOperationError(
                f"F.linear in module {self.where()!r} uses a weight that is not a model parameter"
            )
        in_el = self.g.param_dim(wn, 1, w.shape[1])
        out_el = self.g.param_dim(wn, 0, w.shape[0], producer=True)
        if b is not None and self._name(b) is not None:
            self.g.param_dim(self._name(b), 0, b.shape[0])
            self.g.uf.union_pairs(self.g.dims[(self._name(b), 0)].ids, out_el)
        self._consume(self.ids_of(x), x.dim() - 1, in_el)
        self.set_ids(out, out_el.expand(out.shape))

    def conv(self, x, w, b, stride, padding, dilation, groups, out, transposed) -> None:
        wn = self._name(w)
        if wn is None:
            raise UnsupportedOperationError(
                f"convolution in module {self.where()!r} uses a weight that is not a parameter"
            )
        groups = int(groups or 1)
        axis = 1 if x.dim() == w.dim() else 0
        c_in = x.shape[axis]
        x_ids = self.ids_of(x)
        if transposed:  # weight (C_in, C_out / groups, k...)
            in_local, out_local = w.shape[0] // groups, w.shape[1]
            in_axis, out_axis = 0, 1
        else:  # weight (C_out, C_in / groups, k...)
            in_local, out_local = w.shape[1], w.shape[0] // groups
            in_axis, out_axis = 1, 0
        c_out = out_local * groups
        if groups == 1:
            in_el = self.g.param_dim(wn, in_axis, w.shape[in_axis])
            out_el = self.g.param_dim(wn, out_axis, w.shape[out_axis], producer=True)
            self._consume(x_ids, axis, in_el)
            out_full = out_el
        elif in_local == 1 and not transposed:
            # Depthwise: input channel c feeds outputs c*m .. c*m+m-1; all are one unit.
            out_el = self.g.param_dim(wn, 0, w.shape[0], producer=True)
            mult = out_local
            per_in = out_el.reshape(c_in, mult)
            self.g.uf.union_pairs(per_in[:, :1].expand(c_in, mult).reshape(-1), out_el)
            self._consume(x_ids, axis, per_in[:, 0].contiguous())
            out_full = out_el
        else:
            # Grouped: keep groups balanced by coupling the same local index of every group.
            local_in = self.g.uf.make(in_local)
            local_out = self.g.uf.make(out_local)
            if transposed:
                w_in = self.g.param_dim(wn, 0, w.shape[0])
                self.g.uf.union_pairs(w_in, local_in.repeat(groups))
                w_out = self.g.param_dim(wn, 1, w.shape[1], producer=True)
                self.g.uf.union_pairs(w_out, local_out)
            else:
                w_in = self.g.param_dim(wn, 1, w.shape[1])
                self.g.uf.union_pairs(w_in, local_in)
                w_out = self.g.param_dim(wn, 0, w.shape[0], producer=True)
                self.g.uf.union_pairs(w_out, local_out.repeat(groups))
            self._consume(x_ids, axis, local_in.repeat(groups))
            out_full = local_out.repeat(groups)
        if b is not None and self._name(b) is not None:
            b_el = self.g.param_dim(self._name(b), 0, b.shape[0])
            self.g.uf.union_pairs(b_el, out_full)
        shape = [1] * out.dim()
        shape[axis] = c_out
        self.set_ids(out, out_full.reshape(shape).expand(out.shape))

    def embedding(self, idx: Tensor, w: Tensor, out: Tensor) -> None:
        wn = self._name(w)
        if wn is None:
            return
        el = self.g.param_dim(wn, 1, w.shape[1], producer=True)
        self.set_ids(out, el.expand(out.shape))

    def _bind_params(self, params: Iterable[Tensor | None], x_ch: Tensor) -> None:
        for p in params:
            pn = self._name(p)
            if p is None or pn is None:
                continue
            el = self.g.param_dim(pn, 0, p.shape[0])
            self.g.uf.union_pairs(el, x_ch)

    def norm(self, x: Tensor, normalized_shape, w, b, out: Tensor) -> None:
        ids = self.ids_of(x)
        shape = (
            tuple(normalized_shape)
            if not isinstance(normalized_shape, int)
            else (normalized_shape,)
        )
        if len(shape) != 1:
            # Normalising over several axes: keep those channels fixed.
            self.g.freeze(ids, "normalised over several axes")
            for p in (w, b):
                if p is not None and self._name(p):
                    self.g.freeze(
                        self.g.param_dim(self._name(p), 0, p.shape[0]),
                        "normalised over several axes",
                    )
            return
        if self._head_rows(ids):
            # Normalising each head over head_dim with one weight shared by the heads (q_norm).
            for p in (w, b):
                if p is not None and self._name(p):
                    self.g.freeze(
                        self.g.param_dim(self._name(p), 0, p.shape[0]),
                        "a head_dim vector shared by all heads",
                    )
            self.set_ids(out, ids)
            return
        ch = ids.reshape(-1, x.shape[-1])
        self.g.uf.union_pairs(ch, ch[:1])
        self._bind_params((w, b), ch[0])
        self.set_ids(out, ids)

    def batch_norm(self, x: Tensor, params: tuple, out: Tensor) -> None:
        ids = self.ids_of(x)
        axis = 1 if x.dim() > 1 else 0
        ch = ids.movedim(axis, -1).reshape(-1, x.shape[axis])
        self.g.uf.union_pairs(ch, ch[:1])
        self._bind_params(params, ch[0])
        self.set_ids(out, ids)

    def group_norm(self, x: Tensor, num_groups: int, w, b, out: Tensor) -> None:
        ids = self.ids_of(x)
        c = x.shape[1]
        ch = ids.movedim(1, -1).reshape(-1, c)
        self.g.uf.union_pairs(ch, ch[:1])
        # Keep every group the same size: the same local index of each group goes together.
        per_group = ch[0].reshape(num_groups, c // num_groups)
        self.g.uf.union_pairs(per_group, per_group[:1])
        self._bind_params((w, b), ch[0])
        self.set_ids(out, ids)

    def matmul(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        if name in ("baddbmm", "addmm", "addbmm"):
            bias, a, b = _bind(args, kwargs, ("input", "mat1", "mat2"))
        elif name == "__rmatmul__":
            b, a = args[0], args[1]
            bias = None
        else:
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
            bias = None
        a_is_p = isinstance(a, nn.Parameter)
        b_is_p = isinstance(b, nn.Parameter) and self._name(b) is not None
        b_t = self.transposed.get(id(b)) if isinstance(b, Tensor) else None
        if (b_is_p or b_t is not None) and b.dim() == 2 and not a_is_p:
            # x @ W (W: (in, out), e.g. HF Conv1D) or x @ W.T (e.g. Falcon): a linear layer.
            bn, in_axis, out_axis = (self._name(b), 0, 1) if b_is_p else (b_t, 1, 0)
            in_el = self.g.param_dim(bn, in_axis, b.shape[0])
            out_el = self.g.param_dim(bn, out_axis, b.shape[1], producer=True)
            self._consume(self.ids_of(a), a.dim() - 1, in_el)
            if bias is not None and self._name(bias) is not None:
                bel = self.g.param_dim(self._name(bias), bias.dim() - 1, bias.shape[-1])
                self.g.uf.union_pairs(bel, out_el)
            self.set_ids(out, out_el.expand(out.shape))
            return
        a_ids, b_ids = self.ids_of(a), self.ids_of(b)
        if a_ids is not None and b_ids is not None and a.dim() >= 2 and b.dim() >= 2:
            # Both operands carry channels (attention scores / context): everything inside one
            # leading slice (batch, head) is coupled; the result keeps b's column identity.
            lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            ea = a_ids.expand(*lead, *a.shape[-2:]).reshape(-1, a.shape[-2] * a.shape[-1])
            eb = b_ids.expand(*lead, *b.shape[-2:]).reshape(-1, b.shape[-2] * b.shape[-1])
            both = torch.cat([ea, eb], 1)
            anchor = both.max(1, keepdim=True).values
            self.g.uf.union_pairs(both, anchor)
            cols = b_ids.expand(*lead, *b.shape[-2:]).amax(-2, keepdim=True)
            self.set_ids(out, cols.expand(out.shape))
            if bias is not None and self.ids_of(bias) is not None:
                self.g.uf.union_pairs(self.ids_of(bias).expand(out.shape), cols.expand(out.shape))
            return
        # One operand carries channels, the other is a constant: the contracted channels are fixed.
        if a_ids is not None:
            self.g.freeze(a_ids, f"matrix product with a constant in {self.where()!r}")
        if b_ids is not None:
            self.g.freeze(b_ids, f"matrix product with a constant in {self.where()!r}")

    def sdpa(self, args: tuple, kwargs: dict, out: Tensor) -> None:
        q, k, v = _bind(args, kwargs, ("query", "key", "value"))
        ids = [self.ids_of(t) for t in (q, k, v)]
        if all(i is None for i in ids):
            return
        if any(i is None for i in ids):
            for i in ids:
                if i is not None:
                    self.g.freeze(i, "attention with a constant query, key or value")
            return
        qi, ki, vi = ids
        hq, hk = q.shape[-3] if q.dim() >= 3 else 1, k.shape[-3] if k.dim() >= 3 else 1
        if hq != hk:  # grouped-query attention: query head h reads key/value head h // (hq / hk)
            rep = hq // hk
            ki = ki.repeat_interleave(rep, dim=-3)
            vi = vi.repeat_interleave(rep, dim=-3)
        lead = torch.broadcast_shapes(q.shape[:-2], ki.shape[:-2])
        parts = [
            t.expand(*lead, *t.shape[-2:]).reshape(-1, t.shape[-2] * t.shape[-1])
            for t in (qi, ki, vi)
        ]
        both = torch.cat(parts, 1)
        anchor = both.max(1, keepdim=True).values
        self.g.uf.union_pairs(both, anchor)
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        m_ids = self.ids_of(mask) if isinstance(mask, Tensor) else None
        if m_ids is not None and mask.dim() >= 3 and mask.shape[-3] == hq > 1:
            # A per-head bias passed as the mask (Swin's relative-position bias) follows the heads.
            full = m_ids.expand(*lead, *mask.shape[-2:]).reshape(anchor.shape[0], -1)
            self.g.uf.union_pairs(full, anchor)
        cols = vi.expand(*lead, *vi.shape[-2:]).amax(-2, keepdim=True)
        self.set_ids(out, cols.expand(out.shape))

    # ---- modules in `ignore`: opaque leaves ----
    def opaque(self, name: str, inputs: list[Tensor], output: Any) -> None:
        """An ignored module keeps the channels it reads and writes; its inside is not traced."""
        for t in inputs:
            if t.is_floating_point():
                ids = self.ids_of(t)
                if ids is not None:
                    self.g.freeze(ids, f"read by {name!r}, which is in `ignore`")
        fixed = self.g.uf.make(1)
        self.g.freeze(fixed, f"written by {name!r}, which is in `ignore`")
        for t in _tensors(output):
            if t.is_floating_point():
                self.set_ids(t, fixed.reshape([1] * t.dim()).expand(t.shape))

    # ---- nn.MultiheadAttention as a leaf ----
    def multihead(self, name: str, m: nn.MultiheadAttention, inputs: tuple, output: Any) -> None:
        g = self.g
        e, h = m.embed_dim, m.num_heads
        hd = e // h
        w = _join(name, "in_proj_weight")
        ok = m._qkv_same_embed_dim and m.in_proj_weight is not None and m.bias_k is None
        rows = g.param_dim(w, 0, 3 * e, producer=True)
        cols = g.param_dim(w, 1, e)
        ow = g.param_dim(_join(name, "out_proj.weight"), 0, e, producer=True)
        oc = g.param_dim(_join(name, "out_proj.weight"), 1, e)
        # nn.MultiheadAttention ties its width to embed_dim = num_heads * head_dim, so a residual
        # channel i goes with the local head index i % head_dim of every head (and of q, k, v).
        local = rows.reshape(3, h, hd)
        g.uf.union_pairs(local, local[:1, :1])
        g.uf.union_pairs(cols.reshape(h, hd), local[0, 0])
        g.uf.union_pairs(ow.reshape(h, hd), local[0, 0])
        g.uf.union_pairs(oc.reshape(h, hd), local[0, 0])
        for extra, axis in (("in_proj_bias", 0), ("out_proj.bias", 0)):
            full = _join(name, extra)
            if full in self.param_by_name:
                el = g.param_dim(full, axis, self.param_by_name[full].shape[0])
                g.uf.union_pairs(el, rows if extra == "in_proj_bias" else ow)
        if not ok:
            g.freeze(rows, "nn.MultiheadAttention without a packed in_proj_weight")
        g.multihead[name] = m
        for t in inputs[:3]:
            if isinstance(t, Tensor) and t.is_floating_point():
                self._consume(self.ids_of(t), t.dim() - 1, cols)
        outs = _tensors(output)
        if outs:
            self.set_ids(outs[0], ow.expand(outs[0].shape))


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVT_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups")


def _view_groups(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> list[tuple[list[int], list[int]]]:
    """Pair up the input and output axes of a view whose sizes multiply to the same product."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        a, b = [i], [j]
        pa, pb = in_shape[i], out_shape[j]
        while pa != pb:
            if pa < pb:
                i += 1
                if i >= len(in_shape):
                    return groups
                a.append(i)
                pa *= in_shape[i]
            else:
                j += 1
                if j >= len(out_shape):
                    return groups
                b.append(j)
                pb *= out_shape[j]
        groups.append((a, b))
        i += 1
        j += 1
    return groups


def _pad_ids(ids: Tensor, pad: Any) -> Tensor:
    """``F.pad`` on an id tensor: padding positions repeats their channels, padding channels adds
    constant (-1) entries.

    An axis along which all ids are equal is a position axis (spatial, sequence): the padded
    positions carry the same channels. Along a channel axis the new entries are constants.
    """
    pad = [int(v) for v in pad]
    out = ids
    for i in range(len(pad) // 2):
        d = ids.dim() - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        if lo == 0 and hi == 0:
            continue
        size = out.shape[d] + lo + hi
        if out.shape[d] > 0 and bool((out == out.narrow(d, 0, 1)).all()):
            shape = list(out.shape)
            shape[d] = size
            out = out.narrow(d, 0, 1).expand(shape)
        else:
            spec = [0] * (2 * (i + 1))
            spec[2 * i], spec[2 * i + 1] = lo, hi
            out = torch.nn.functional.pad(out.contiguous(), spec, value=-1)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...]) -> list[Any]:
    vals = list(args[: len(names)])
    for n in names[len(vals) :]:
        vals.append(kwargs.get(n))
    return vals


def _tensors(x: Any) -> list[Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, Tensor)]


# Fields of Hugging Face outputs that expose internal states rather than results: their widths
# follow pruning (a seq2seq LM returns ``encoder_last_hidden_state`` next to its logits).
_INTERNAL_OUTPUTS = {
    "encoder_last_hidden_state",
    "hidden_states",
    "encoder_hidden_states",
    "decoder_hidden_states",
    "attentions",
    "encoder_attentions",
    "decoder_attentions",
    "cross_attentions",
    "past_key_values",
}


def _flatten_outputs(out: Any) -> list[Tensor]:
    """Tensors of a model output (tuples, dicts, dataclass-like Hugging Face outputs)."""
    found: list[Tensor] = []
    stack = [out]
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            found.append(item)
        elif isinstance(item, dict) and hasattr(item, "to_tuple"):
            stack.extend(v for k, v in item.items() if k not in _INTERNAL_OUTPUTS)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "to_tuple"):
            stack.extend(item.to_tuple())
    return found


def _call(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def build_graph(
    model: nn.Module, example_inputs: Any, ignore: Iterable[nn.Module | str] = ()
) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and return its channel dependency graph.

    ``example_inputs`` is a tensor, a tuple of positional arguments or a dict of keyword
    arguments. Small inputs (batch 1, short sequences) keep tracing fast. Parameters of the
    modules in ``ignore`` (modules or their qualified names) keep all their channels.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    graph = DependencyGraph(model)
    param_names: dict[int, str] = {}
    param_by_name: dict[str, Tensor] = {}
    for pname, p in model.named_parameters():
        param_names[id(p)] = pname
        param_by_name[pname] = p
    for bname, buf in model.named_buffers():
        param_names.setdefault(id(buf), bname)
        param_by_name.setdefault(bname, buf)
    tracer = _Tracer(graph, param_names)
    tracer.param_by_name = param_by_name
    ignore = list(ignore)
    ignored = {_module_name(model, item) for item in ignore}
    handles = []

    for mname, module in model.named_modules():
        opaque = mname in ignored
        is_leaf = opaque or isinstance(module, nn.MultiheadAttention)

        def pre(mod, inputs, kwargs, _n=mname, _leaf=is_leaf):
            tracer.module_stack.append(_n)
            if _leaf and not tracer.leaf_depth:
                tracer.leaf_depth += 1
                tracer.leaf_owner = mod

        def post(mod, inputs, kwargs, output, _n=mname, _leaf=is_leaf, _opaque=opaque):
            tracer.module_stack.pop()
            if _leaf and tracer.leaf_depth and tracer.leaf_owner is mod:
                tracer.leaf_depth -= 1
                tracer.leaf_owner = None
                tracer.busy = True
                try:
                    if _opaque:
                        tracer.opaque(_n, _tensors((inputs, kwargs)), output)
                    else:
                        tracer.multihead(_n, mod, inputs, output)
                finally:
                    tracer.busy = False

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))

    was_training = model.training
    model.eval()
    try:
        inputs = example_inputs
        # Model inputs have fixed channels: one frozen element marks them.
        frozen_in = graph.uf.make(1)
        graph.freeze(frozen_in, "model input")
        for t in _tensors(inputs):
            if t.is_floating_point():
                tracer.set_ids(t, frozen_in.reshape([1] * t.dim()).expand(t.shape))
        with torch.no_grad(), tracer:
            output = _call(model, inputs)
        for t in _flatten_outputs(output):
            ids = tracer.ids_of(t)
            if ids is not None:
                graph.freeze(ids, "model output")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    _finish_full_params(graph, param_by_name)
    _bind_untraced_tokens(graph, model)
    for item in ignore:
        _freeze_module(graph, model, item)
    return graph


def _finish_full_params(graph: DependencyGraph, param_by_name: dict[str, Tensor]) -> None:
    """Turn per-element ids of free parameters (cls tokens, position tables) into axis dims."""
    uf = graph.uf
    for name, ids in graph.full_params.items():
        roots = uf.roots(ids).reshape(ids.shape)
        chosen = None
        for axis in range(ids.dim() - 1, -1, -1):
            if ids.shape[axis] <= 1:
                continue
            first = roots.movedim(axis, -1).reshape(-1, ids.shape[axis])
            if bool((first == first[:1]).all()):
                chosen = axis
                break
        if chosen is None or (name, chosen) in graph.dims:
            graph.freeze(ids, "free parameter with no single channel axis")
            continue
        vec = ids.movedim(chosen, -1).reshape(-1, ids.shape[chosen])
        uf.union_pairs(vec, vec[:1])
        graph.dims[(name, chosen)] = ParamDim(name, chosen, vec[0].clone(), False)


def _bind_untraced_tokens(graph: DependencyGraph, model: nn.Module) -> None:
    """Free parameters the example forward did not use follow their sibling token's channels.

    DINOv2's ``mask_token`` (used only with ``bool_masked_pos=``) sits next to ``cls_token``:
    its last axis is the hidden width, like the traced token's, and must shrink with it.
    """
    traced = {name for name, _ in graph.dims} | set(graph.full_params)
    for mname, module in model.named_modules():
        siblings = [
            graph.dims[(_join(mname, n), p.dim() - 1)]
            for n, p in module._parameters.items()
            if p is not None
            and (_join(mname, n), p.dim() - 1) in graph.dims
            and _join(mname, n) in graph.full_params
        ]
        if not siblings:
            continue
        for n, p in module._parameters.items():
            full = _join(mname, n)
            if p is None or full in traced or p.dim() < 1:
                continue
            ref = next((d for d in siblings if d.ids.numel() == p.shape[-1]), None)
            if ref is not None:
                graph.dims[(full, p.dim() - 1)] = ParamDim(full, p.dim() - 1, ref.ids.clone())


def _module_name(model: nn.Module, item: nn.Module | str) -> str:
    """Qualified name of a module given in ``ignore`` (a module or its name)."""
    if isinstance(item, str):
        try:
            model.get_submodule(item)
        except AttributeError as err:
            raise ValueError(f"ignore: the model has no module named {item!r}") from err
        return item
    name = next((n for n, m in model.named_modules() if m is item), None)
    if name is None:
        raise ValueError("ignore: a module in `ignore` is not part of the model")
    return name


def _freeze_module(graph: DependencyGraph, model: nn.Module, item: nn.Module | str) -> None:
    prefix = _module_name(model, item)
    module = model.get_submodule(prefix)
    for pname, _ in module.named_parameters():
        full = _join(prefix, pname)
        for (n, _axis), dim in graph.dims.items():
            if n == full:
                graph.freeze(dim.ids, "in `ignore`")
