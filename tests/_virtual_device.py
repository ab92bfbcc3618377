"""A second device on a CPU-only machine: real CPU data that reports itself as ``meta``.

Device bugs (a mask, index or buffer left on the CPU while the model is on a GPU) only show on a
machine with two devices. This module fakes the second one. Inside :class:`VirtualDevice`,
``model.to("meta")`` (and every factory call or copy asking for ``device="meta"``) returns a
:class:`VirtualTensor`: a wrapper that *reports* ``device == meta`` but holds a real CPU tensor,
so data-dependent code (``sort``, ``kthvalue``, ``.item()``) runs exactly as on the CPU.

Every aten operation that mixes a virtual tensor with a plain CPU tensor of one or more dimensions
raises :class:`DeviceMismatch`, as CUDA raises ``Expected all tensors to be on the same device``
(0-dimensional CPU tensors, ``copy_`` across devices and CPU indices into a device tensor are
allowed, as CUDA allows them; device indices into a CPU tensor are not).

``torch.device("meta")`` is used as the stand-in because it needs no backend: ``.to("cuda")``
cannot be dispatched on a CPU-only build, ``.to("meta")`` can, and the mode intercepts it before
any real meta kernel runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

VIRTUAL = torch.device("meta")


class DeviceMismatch(RuntimeError):
    """A virtual-device tensor met a CPU tensor (what CUDA reports as a device mismatch)."""


class VirtualTensor(torch.Tensor):
    """A CPU tensor that reports :data:`VIRTUAL` as its device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> VirtualTensor:
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=VIRTUAL,
            requires_grad=elem.requires_grad,
        )
        out.elem = elem
        return out

    @property
    def data(self) -> torch.Tensor:  # type: ignore[override]
        return torch.Tensor.data.__get__(self)

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        # ``param.data = new`` swaps the payload: keep the wrapped CPU tensor in step with it
        torch.Tensor.data.__set__(self, value)
        self.elem = value.elem if isinstance(value, VirtualTensor) else value

    def tolist(self) -> Any:  # type: ignore[override]
        return self.elem.tolist()  # works on CUDA tensors too (a copy to the host)

    def __repr__(self) -> str:  # type: ignore[override]
        return f"VirtualTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        return _run(func, args, kwargs or {})


def _unwrap(x: Any) -> Any:
    return x.elem if isinstance(x, VirtualTensor) else x


# ``dst.copy_(src)`` copies across devices on CUDA too (``load_state_dict`` relies on it)
_CROSS_DEVICE = {torch.ops.aten.copy_.default}


# ``x[idx]`` / ``x[idx] = v``: CUDA accepts CPU indices into a GPU tensor (not the reverse)
_INDEXING = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}


def _run(func: Any, args: tuple, kwargs: dict) -> Any:
    flat, _ = tree_flatten((args, kwargs))
    virtual = any(isinstance(a, VirtualTensor) for a in flat)
    checked = flat
    if func in _INDEXING and isinstance(args[0], VirtualTensor):
        checked, _ = tree_flatten((args[0], args[2:], kwargs))  # CPU indices are fine here
    cpu = [
        a
        for a in checked
        if isinstance(a, torch.Tensor) and not isinstance(a, VirtualTensor) and a.dim() > 0
    ]
    if virtual and cpu and func not in _CROSS_DEVICE:
        shapes = [tuple(a.shape) for a in cpu]
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device: {func} got virtual-device tensors "
            f"and CPU tensors of shapes {shapes}"
        )
    kwargs = dict(kwargs)
    if kwargs.get("device") is not None:  # a factory call or a copy naming its device
        virtual = torch.device(kwargs["device"]).type == VIRTUAL.type
        kwargs["device"] = torch.device("cpu")
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if not virtual:
        return out
    return tree_map(lambda o: VirtualTensor(o) if isinstance(o, torch.Tensor) else o, out)


class _Literals(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` copies its data before any aten call: build it on the CPU
    and move it with a (dispatched, hence intercepted) copy instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = dict(kwargs or {})
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            device = torch.device(kwargs.pop("device"))
            if device.type == VIRTUAL.type:
                return func(*args, **kwargs).to(VIRTUAL)
            kwargs["device"] = device
        return func(*args, **kwargs)


class VirtualDevice(TorchDispatchMode):
    """Within this mode, ``device="meta"`` means the virtual device (see the module docstring)."""

    def __enter__(self) -> VirtualDevice:
        # ``module.to(device)`` must keep the parameter objects (an optimizer built before the
        # move holds them, as on CUDA): swap their payload in place instead of replacing them
        self._swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        self._literals = _Literals()
        self._literals.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._literals.__exit__(*exc)
        torch.__future__.set_swap_module_params_on_conversion(self._swap)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        if any(t is VirtualTensor for t in types):
            return NotImplemented  # the subclass handles calls that involve it
        return _run(func, args, kwargs or {})


def on_virtual(t: Any) -> bool:
    """True for a tensor on the virtual device."""
    return isinstance(t, VirtualTensor)


def leaves(out: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) result: tuples, lists, dicts, MaskSets, dataclasses."""
    from dataclasses import fields, is_dataclass

    from prunekit.core.masks import MaskSet

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, MaskSet):
        return list(out.values())
    if isinstance(out, dict):
        return [t for v in out.values() for t in leaves(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in leaves(v)]
    if is_dataclass(out) and not isinstance(out, type):
        return [t for f in fields(out) for t in leaves(getattr(out, f.name))]
    return []
