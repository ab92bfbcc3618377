"""A restricted unpickler for dataset files: plain data and numeric numpy arrays, no code.

``pickle.load`` on an untrusted file can import and call anything. The CIFAR python batches are
pickled dicts of bytes, lists, ints and numpy arrays, so the unpickler below resolves only the few
globals needed to rebuild numeric numpy arrays (bool, int, uint, float, complex) and refuses
every other global, object arrays, structured dtypes and forged dtype states.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

# numpy's own globals are never handed to the pickle stream: ``numpy.ndarray`` called through
# REDUCE builds object arrays, and a real ``numpy.dtype`` accepts forged flags through BUILD
# (e.g. "holds objects" on a float dtype, turning raw bytes into pointers). The stream gets
# inert stand-ins instead, and arrays are rebuilt at the end from validated numeric parts only.
_NUMERIC_KINDS = frozenset("biufc")  # bool, int, uint, float, complex
_BYTEORDERS = frozenset("<>|=")


def _reject(why: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"restricted unpickler: {why}")


class _NdarrayToken:
    """Stands for the ``numpy.ndarray`` global; not callable, only accepted by ``_reconstruct``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _reject("numpy.ndarray may not be called (only rebuilt by _reconstruct)")

    def __reduce__(self) -> Any:  # never pickled back
        raise TypeError("not picklable")


_NDARRAY = _NdarrayToken()


class _DtypeSpec:
    """A numeric dtype named by the stream; its pickled state may only restate the byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if isinstance(spec, bytes):  # Python 2 pickles (the CIFAR batches) hold byte strings
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or len(spec) > 8:
            raise _reject(f"dtype {spec!r} is not a plain numeric type code")
        try:
            base = np.dtype(spec)
        except TypeError:
            raise _reject(f"unknown dtype {spec!r}") from None
        if base.kind not in _NUMERIC_KINDS or base.fields is not None or base.subdtype:
            raise _reject(f"dtype {spec!r} is not numeric (bool, int, uint, float, complex)")
        self.dtype = base

    def __setstate__(self, state: Any) -> None:
        # numpy: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, meta])
        if not isinstance(state, tuple) or len(state) not in (8, 9):
            raise _reject("malformed dtype state")
        _, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        if subarray is not None or names is not None or fields is not None:
            raise _reject("structured or sub-array dtypes are not allowed")
        if elsize != -1 or alignment != -1 or flags != self.dtype.flags:
            raise _reject(f"forged dtype state for {self.dtype.str!r} (flags {flags!r})")
        if isinstance(order, bytes):
            order = order.decode("latin1")
        if order not in _BYTEORDERS:
            raise _reject(f"unknown byte order {order!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _as_dtype(value: Any) -> np.dtype:
    if isinstance(value, _DtypeSpec):
        return value.dtype
    if isinstance(value, (str, bytes)):
        return _DtypeSpec(value).dtype
    raise _reject("an array's dtype must be a numeric numpy.dtype")


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(n) is int and n >= 0 for n in value):
        raise _reject(f"array shape {value!r} is not a tuple of non-negative ints")
    return value


def _from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    if isinstance(raw, pickle.PickleBuffer):
        raw = bytes(raw.raw())
    if not isinstance(raw, (bytes, bytearray)):
        raise _reject("array data must be raw bytes (object arrays are not allowed)")
    count = 1
    for n in shape:
        count *= n
    if len(raw) != count * dtype.itemsize:
        raise _reject(f"array data holds {len(raw)} bytes, expected {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()


class _ArraySpec:
    """An array under construction (``_reconstruct`` + BUILD); replaced by the array at the end."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or self.array is not None:
            raise _reject("malformed array state")
        _, shape, dtype, is_fortran, raw = state
        order = "F" if is_fortran is True else "C"
        self.array = _from_bytes(raw, _as_dtype(dtype), _shape(shape), order)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArraySpec:
    """Stand-in for numpy's ``_reconstruct``: only a plain ``numpy.ndarray`` may be rebuilt."""
    if subtype is not _NDARRAY:
        raise _reject("only numpy.ndarray may be rebuilt")
    return _ArraySpec()


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise _reject("unexpected _codecs.encode call")
    return text.encode(encoding)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol-5 array pickles rebuild from a raw buffer; numeric dtypes only."""
    if isinstance(order, bytes):
        order = order.decode("latin1")
    if order not in ("C", "F"):
        raise _reject(f"array order {order!r}")
    return _from_bytes(buf, _as_dtype(dtype), _shape(shape), order)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeSpec,
    ("_codecs", "encode"): _encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


def _finish(obj: Any, seen: dict[int, Any]) -> Any:
    """Replace the stand-ins by real arrays and dtypes; refuse any left half-built."""
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _ArraySpec):
        if obj.array is None:
            raise _reject("an array was never given its data")
        out: Any = obj.array
    elif isinstance(obj, _DtypeSpec):
        out = obj.dtype
    elif isinstance(obj, _NdarrayToken):
        raise _reject("numpy.ndarray may only be used to rebuild an array")
    elif isinstance(obj, dict):
        out = {}
        seen[key] = out
        for k, v in obj.items():
            out[_finish(k, seen)] = _finish(v, seen)
        return out
    elif isinstance(obj, list):
        out = []
        seen[key] = out
        out.extend(_finish(v, seen) for v in obj)
        return out
    elif isinstance(obj, (tuple, set, frozenset)):
        out = type(obj)(_finish(v, seen) for v in obj)
    else:
        out = obj
    seen[key] = out
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits dict, list, tuple, str, bytes, numbers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"restricted unpickler: refusing global {module}.{name} "
                "(only plain data and numpy arrays are allowed)"
            ) from None


def restricted_load(file: BinaryIO | bytes, encoding: str = "bytes") -> Any:
    """Load a pickle of plain data (and numpy arrays) without executing arbitrary code.

    Raises:
        pickle.UnpicklingError: the pickle references anything else.
    """
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    return _finish(RestrictedUnpickler(file, encoding=encoding).load(), {})
