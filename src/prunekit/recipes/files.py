"""The files of a run directory: stamped stage outputs, the run log, the directory lock.

Every stage output records the hash of the config slice and the stage that wrote it
(:mod:`prunekit.core.stamps`); reading one back refuses a file another config or stage wrote.
All writes are atomic and never follow a symlink (:mod:`prunekit.core.serialization`).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core import stamps
from prunekit.core.errors import FileFormatError
from prunekit.core.masks import MaskSet
from prunekit.core.serialization import (
    check_state_fits,
    clean_stale_temps,
    load_safetensors,
    make_dirs,
    open_append,
    open_lock,
    read_json,
    read_safetensors,
    save_safetensors,
    write_json,
)

__all__ = [
    "RunLog",
    "load_masks",
    "load_output",
    "load_state_file",
    "locked",
    "read_output",
    "read_stage_json",
    "read_state_dict",
    "save_masks",
    "save_state",
    "write_stage_json",
]


class RunLog:
    """Appends timestamped lines to ``log.txt`` and echoes them (unless ``quiet``)."""

    def __init__(self, path: Path | None, quiet: bool = False) -> None:
        self.path = path
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.path is not None:
            with open_append(self.path) as fh:  # O_NOFOLLOW: never appends to a planted link
                fh.write(line + "\n")
        if not self.quiet:
            print(line, flush=True)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (parallel runs sharing a dense model wait for it).

    Holding it, temp files a killed process left in ``directory`` are removed.
    """
    make_dirs(directory)
    with open_lock(directory / ".lock") as fh:  # no truncation, no symlink
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            clean_stale_temps(directory)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _with_stamp(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` plus the active stage stamp (config hash and stage), when a stage is running."""
    stamp = stamps.active()
    return data if stamp is None else {**data, stamps.STAMP_KEY: stamp.to_json()}


def save_state(model: nn.Module, path: Path, meta: dict[str, Any] | None = None) -> None:
    """The model's state_dict, stamped, as safetensors."""
    # Clones: tied weights share storage, which safetensors refuses to write twice.
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_safetensors(state, path, _with_stamp(meta or {}))


def read_output(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a file a stage wrote, refused when another config or stage wrote it."""
    tensors, meta = load_safetensors(path)
    stamps.check(meta.get(stamps.STAMP_KEY), path)
    return tensors


def load_output(model: nn.Module, path: Path) -> None:
    """Load a stage's weights file into ``model``, checked whole first."""
    state = read_output(path)
    check_state_fits(model, state, path)
    model.load_state_dict(state)


def save_masks(masks: MaskSet, path: Path) -> None:
    """``masks``, stamped."""
    masks.save(path, metadata=_with_stamp(dict(getattr(masks, "metadata", None) or {})))


def load_masks(path: Path, model: nn.Module) -> MaskSet:
    """A stage's masks, on the model's device, checked against the stamp and the model."""
    masks = MaskSet.load(path, device=next(model.parameters()).device)
    stamps.check(masks.metadata.get(stamps.STAMP_KEY), path)
    try:
        masks.validate(model)
    except ValueError as err:
        raise FileFormatError(path, f"does not fit the model: {err}") from None
    return masks


def write_stage_json(data: dict[str, Any], path: Path) -> None:
    """A stage's record (its done file), stamped."""
    write_json(_with_stamp(data), path)


def read_stage_json(path: Path) -> dict[str, Any]:
    """A stage's record, refused when another config or stage wrote it."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise FileFormatError(path, "expected a JSON object")
    data = dict(data)
    stamps.check(data.pop(stamps.STAMP_KEY, None), path)
    return data


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from safetensors (plain, prunekit or ``save_compressed``) or, for ``.pt`` /
    ``.pth`` / ``.bin`` files, ``torch.load(weights_only=True)`` (a ``state_dict`` key is used).

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: a truncated or corrupt file, or one that holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dense_checkpoint: no such file {str(path)!r}")
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler raises many types for a corrupt file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise FileFormatError(
                path, f"not a readable weights-only torch file: {reason}"
            ) from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
        ):
            raise FileFormatError(path, "does not hold a state_dict (names to tensors)")
        return data
    tensors, raw = read_safetensors(path)
    if "prunekit" in raw:
        from prunekit.export import FORMAT, load_compressed

        _, meta = load_safetensors(path)
        if meta.get("format") == FORMAT:
            return load_compressed(path)
    return tensors


def load_state_file(model: nn.Module, path: Path) -> None:
    """Load a user-given weights file (floating dtypes are cast, as load_state_dict does);
    checked whole before the model changes."""
    state = read_state_dict(path)
    check_state_fits(model, state, path, cast_floats=True)
    model.load_state_dict(state)
