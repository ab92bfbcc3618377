"""A restricted unpickler for dataset files: plain data and numpy arrays, nothing that runs code.

``pickle.load`` on an untrusted file can import and call anything. The CIFAR python batches are
pickled dicts of bytes, lists, ints and numpy arrays, so the unpickler below resolves only the few
globals needed to rebuild numpy arrays and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

# (module, name) pairs a numpy array pickle needs; numpy 2 moved numpy.core to numpy._core.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__new__,
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__new__,
}


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stand-in for numpy's ``_reconstruct``: only a plain ``numpy.ndarray`` may be rebuilt."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("restricted unpickler: only numpy.ndarray may be rebuilt")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:
        raise pickle.UnpicklingError("restricted unpickler: object dtypes are not allowed")
    return dtype


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise pickle.UnpicklingError("restricted unpickler: unexpected _codecs.encode call")
    return text.encode(encoding)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Protocol-5 array pickles rebuild from a raw buffer; refuse object dtypes."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("restricted unpickler: object dtypes are not allowed")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


_ALLOWED[("_codecs", "encode")] = _encode
_ALLOWED[("numpy.core.numeric", "_frombuffer")] = _frombuffer
_ALLOWED[("numpy._core.numeric", "_frombuffer")] = _frombuffer
_ALLOWED[("numpy.core.multiarray", "_reconstruct")] = _reconstruct
_ALLOWED[("numpy._core.multiarray", "_reconstruct")] = _reconstruct
_ALLOWED[("numpy", "dtype")] = _dtype


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
    return RestrictedUnpickler(file, encoding=encoding).load()
