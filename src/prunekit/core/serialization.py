"""Safe, atomic files: safetensors and JSON only, bit-packed booleans, temp file + rename.

Every write goes through the helpers here, which never follow a symlink: a final path that is a
symlink is refused, appends and locks open with ``O_NOFOLLOW``, and new files are written to a
temp file created with ``O_EXCL | O_NOFOLLOW`` in the same folder, then renamed over the target.
Inside :func:`output_root` (set by the experiment runner) a symlinked folder between the output
folder and the file is refused too. Files get mode ``0o666`` minus the umask, as ``open()`` gives.
Temp files are named ``.prunekit-tmp-*.tmp`` so that :func:`clean_stale_temps` can remove the
ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from prunekit.core.errors import DiskFullError, FileFormatError
from prunekit.core.safety import UnsafeFileError

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device="cpu")


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a boolean tensor into uint8, eight entries a byte, most significant bit first."""
    flat = mask.detach().reshape(-1).to("cpu", torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.reshape(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_bits`."""
    numel = 1
    for size in shape:
        numel *= size
    bits = packed.reshape(-1, 1).bitwise_and(_BIT_WEIGHTS.to(packed.device)).ne(0).reshape(-1)
    if bits.numel() < numel:
        raise ValueError(f"packed mask holds {bits.numel()} bits, fewer than {numel} entries")
    return bits[:numel].reshape(shape)


TMP_PREFIX = ".prunekit-tmp-"
TMP_SUFFIX = ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_OUTPUT_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "prunekit_output_root", default=None
)


@contextlib.contextmanager
def output_root(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Within this block, writes below ``path`` also refuse symlinked folders under ``path``.

    ``path`` itself may be a symlink the user chose; only what lies below it is checked.
    """
    root = Path(os.path.abspath(path))
    token = _OUTPUT_ROOT.set(root)
    try:
        yield root
    finally:
        _OUTPUT_ROOT.reset(token)


def _refuse(path: Path) -> UnsafeFileError:
    return UnsafeFileError(f"refusing to write through symlink {str(path)!r}")


def check_write_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if prunekit may write it: neither it nor (inside :func:`output_root`)
    a folder between the output root and it is a symlink.

    Raises:
        UnsafeFileError: naming the symlink.
    """
    target = Path(path)
    if os.path.islink(target):
        raise _refuse(target)
    root = _OUTPUT_ROOT.get()
    if root is not None:
        absolute, prefix = os.path.abspath(target), os.path.join(root, "")
        if absolute.startswith(prefix):
            current = str(root)
            for part in absolute[len(prefix) :].split(os.sep)[:-1]:
                current = os.path.join(current, part)
                if os.path.islink(current):
                    raise _refuse(Path(current))
    return target


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path`` that refuses symlinked folders below the :func:`output_root`.

    ``path`` itself may be a link to a folder when it is not below the output root: the folder a
    caller names is the caller's choice.
    """
    directory = Path(path)
    check_write_path(directory / "x")
    if not os.path.isdir(directory):
        directory.mkdir(parents=True, exist_ok=True)
        check_write_path(directory / "x")  # a link planted while the folders were made
    return directory


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` minus the process umask."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):  # read without changing it (thread-safe)
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise _refuse(path) from None
        raise


def open_append(path: str | os.PathLike[str]) -> IO[str]:
    """A text file opened for appending that is never a symlink (``O_NOFOLLOW``)."""
    target = check_write_path(path)
    make_dirs(target.parent)
    fd = _open_nofollow(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a")


def open_lock(path: str | os.PathLike[str]) -> IO[bytes]:
    """A lock file opened read-write without truncating it and never through a symlink."""
    target = check_write_path(path)
    make_dirs(target.parent)
    fd = _open_nofollow(target, os.O_RDWR | os.O_CREAT)
    return os.fdopen(fd, "r+b", buffering=0)


_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new temp file beside ``target`` (``O_EXCL``: never an existing file or link)."""
    for _ in range(100):
        tmp = target.parent / f"{TMP_PREFIX}{target.name[:80]}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {str(target)!r}")


def _commit(tmp: Path, target: Path) -> None:
    info = os.lstat(tmp)
    if not stat.S_ISREG(info.st_mode):  # the temp file was swapped for a link meanwhile
        raise _refuse(tmp)
    # Some writers (safetensors) leave 0600 whatever the umask: give what open() would.
    os.chmod(tmp, file_mode())
    check_write_path(target)
    os.replace(tmp, target)


@contextlib.contextmanager
def _replacing(target: Path) -> Iterator[tuple[int, Path]]:
    """A new temp file (descriptor, path) beside ``target`` that replaces it when the block ends
    normally; on any error the temp file is removed, ``target`` is left as it was, and a full
    disk is reported as :class:`DiskFullError` naming ``target``."""
    make_dirs(target.parent)
    fd, tmp = _create_temp(target)
    try:
        yield fd, tmp
        _commit(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(target) from err
        raise


def expect_format(
    meta: dict[str, Any], expected: str, path: str | os.PathLike[str], what: str
) -> None:
    """Raise :class:`FileFormatError` naming ``path`` unless its metadata says ``expected``."""
    found = meta.get("format")
    if found != expected:
        raise FileFormatError(
            path, f"not a prunekit {what} (format {found!r}, expected {expected!r})"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary path beside ``path``; on success it replaces ``path`` atomically.

    Raises:
        UnsafeFileError: ``path`` (or, inside :func:`output_root`, a folder above it) is a
            symlink.
    """
    target = check_write_path(path)
    with _replacing(target) as (fd, tmp):
        os.close(fd)
        yield tmp


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically, through the temp file's own descriptor."""
    with _replacing(check_write_path(path)) as (fd, tmp), os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(text.encode("utf-8"), path)


def is_stale_temp(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder of prunekit's own naming."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def clean_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove prunekit temp files and folders left below ``directory`` by a killed process.

    Call it only while holding the folder's lock (a live writer's temp file would go too).
    Symlinks are not followed. Returns what was removed.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in [d for d in dirnames if is_stale_temp(d)]:
            dirnames.remove(name)
            path = Path(dirpath, name)
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        for name in filenames:
            if is_stale_temp(name):
                path = Path(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def save_safetensors(
    tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, Any]
) -> None:
    """Write tensors plus JSON metadata (under the key ``prunekit``) atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"prunekit": json.dumps(metadata)})


# What a broken file raises while it is parsed: safetensors' own error (truncated, random
# bytes, a header larger than its 100 MB cap, offsets past the end), I/O and decoding errors.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    SafetensorError,
    OSError,
    ValueError,
    RuntimeError,
    TypeError,
    KeyError,
    OverflowError,
    MemoryError,
)


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor of a safetensors file plus its raw string metadata.

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: the file is empty, truncated, corrupt or not safetensors (names ``path``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise FileFormatError(path, f"cannot be read ({err.strerror or err})") from None
    if size < 8:
        raise FileFormatError(path, f"not a safetensors file ({size} bytes; truncated or empty?)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            # Owned copies: a tensor backed by the memory-mapped file would crash the process
            # (SIGBUS) once the file is truncated or replaced while the tensor is still in use.
            tensors = {key: handle.get_tensor(key).clone() for key in handle.keys()}  # noqa: SIM118
    except _PARSE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FileFormatError(
            path, f"not a readable safetensors file (truncated or corrupt?): {reason}"
        ) from None
    return tensors, metadata


def load_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read tensors and the JSON metadata written by :func:`save_safetensors`.

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: a corrupt file, or one without prunekit's JSON metadata.
    """
    tensors, raw = read_safetensors(path)
    if "prunekit" not in raw:
        raise FileFormatError(path, "not a prunekit file (no 'prunekit' metadata)")
    try:
        meta = json.loads(raw["prunekit"])
    except (ValueError, RecursionError) as err:
        raise FileFormatError(path, f"corrupt 'prunekit' metadata (invalid JSON: {err})") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, "corrupt 'prunekit' metadata (expected a JSON object)")
    return tensors, meta


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a corrupt or unreadable one raises :class:`FileFormatError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise FileFormatError(path, f"not valid JSON (truncated or corrupt?): {err}") from None


def tensor_entry(
    tensors: dict[str, Tensor],
    key: str,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    numel: int | None = None,
) -> Tensor:
    """``tensors[key]`` checked for presence, dtype and (at least) ``numel`` entries."""
    value = tensors.get(key)
    if value is None:
        raise FileFormatError(path, f"tensor {key!r} is missing")
    if dtype is not None and value.dtype != dtype:
        raise FileFormatError(path, f"tensor {key!r} has dtype {value.dtype}, expected {dtype}")
    if numel is not None and value.numel() < numel:
        raise FileFormatError(
            path, f"tensor {key!r} holds {value.numel()} entries, expected {numel}"
        )
    return value


def meta_entry(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Any) -> Any:
    """``meta[key]`` checked for presence and JSON type (a corrupt file names ``path``)."""
    if key not in meta:
        raise FileFormatError(path, f"metadata key {key!r} is missing")
    value = meta[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise FileFormatError(
            path, f"metadata key {key!r}: expected {names}, got {type(value).__name__}"
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def shape_entry(value: Any, what: str, path: Any) -> tuple[int, ...]:
    """A shape read from metadata: a list of non-negative ints."""
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise FileFormatError(path, f"{what}: expected a shape (list of ints), got {value!r}")
    return tuple(value)


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically (never through a symlink)."""
    write_text_atomic(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def without_storage(tensor: Tensor) -> bool:
    """A plain tensor on the meta device: shapes only, no data to score or load into.

    Tensor subclasses that report ``meta`` (fake or virtual devices) may hold data: not counted.
    """
    return tensor.is_meta and type(tensor) in (torch.Tensor, torch.nn.Parameter)


def check_state_fits(
    model: torch.nn.Module,
    state: dict[str, Tensor],
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    cast_floats: bool = False,
) -> None:
    """Check that ``state`` loads into ``model`` without error: names (all of them when
    ``strict``), shapes and dtypes (``cast_floats``: any floating dtype may load into a floating
    tensor, as ``load_state_dict`` casts it). Nothing is copied, so a failed check leaves the
    model as it was.

    Raises:
        DeviceError: the model's weights live on the meta device (nothing to load them into).
        FileFormatError: a missing, unexpected or mismatched tensor (names ``path``).
    """
    from prunekit.core.errors import DeviceError

    own = model.state_dict()
    meta = [name for name, value in own.items() if without_storage(value)]
    if meta:
        raise DeviceError(
            f"model: {meta[0]!r} is on the meta device (no storage); materialise the model "
            "(e.g. model.to_empty(device='cpu')) before loading weights into it"
        )
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing:
            raise FileFormatError(path, f"does not fit the model: tensor {missing[0]!r} is missing "
                                        f"({len(missing)} missing)")  # fmt: skip
        if unexpected:
            raise FileFormatError(path, f"does not fit the model: {unexpected[0]!r} is not in it "
                                        f"({len(unexpected)} unexpected)")  # fmt: skip
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            continue
        if tuple(value.shape) != tuple(target.shape):
            raise FileFormatError(
                path,
                f"does not fit the model: tensor {key!r} has shape {list(value.shape)}, "
                f"the model expects "
                f"{list(target.shape)}",
            )
        castable = cast_floats and value.is_floating_point() and target.is_floating_point()
        if value.dtype != target.dtype and not castable:
            raise FileFormatError(
                path,
                f"does not fit the model: tensor {key!r} has dtype {value.dtype}, the model "
                f"expects {target.dtype}",
            )
