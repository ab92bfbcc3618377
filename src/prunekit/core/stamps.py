"""Stage stamps: the config hash and stage name recorded in every file a run's stage writes.

A run directory holds outputs that are reused on resume (checkpoints, masks, models, JSON). Each
records the hash of the config slice and the stage that produced it, and a resumed stage refuses a
file whose stamp differs from its own: a file copied from another run (say sparsity 0.5 into a
sparsity-0.8 run) fails loudly instead of silently changing the result.

The runner sets the active stamp with :func:`stamped` around each stage; checkpoints written and
read inside (also by recipes' own Trainers) are stamped and checked without extra arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prunekit.core.errors import StaleFileError

STAMP_KEY = "stamp"


@dataclass(frozen=True)
class Stamp:
    """Which config (hash of the slice it depends on) and stage wrote a file."""

    config_hash: str
    stage: str

    def to_json(self) -> dict[str, str]:
        return {"config_hash": self.config_hash, "stage": self.stage}


_ACTIVE: contextvars.ContextVar[Stamp | None] = contextvars.ContextVar(
    "prunekit_stamp", default=None
)


@contextlib.contextmanager
def stamped(config_hash: str, stage: str) -> Iterator[Stamp]:
    """Make ``(config_hash, stage)`` the stamp written into and expected from stage files."""
    stamp = Stamp(config_hash, stage)
    token = _ACTIVE.set(stamp)
    try:
        yield stamp
    finally:
        _ACTIVE.reset(token)


def active() -> Stamp | None:
    """The stamp of the running stage (None outside a runner stage)."""
    return _ACTIVE.get()


def check(found: Any, path: str | os.PathLike[str], expected: Stamp | None = None) -> None:
    """Refuse ``path`` when its recorded stamp ``found`` is not ``expected`` (default: active).

    Raises:
        StaleFileError: the file was written by another config or stage, or records no stamp.
    """
    expected = expected if expected is not None else active()
    if expected is None:
        return
    if not isinstance(found, dict):
        raise StaleFileError(path, "(none recorded)", expected.config_hash, None, expected.stage)
    if found.get("config_hash") != expected.config_hash or found.get("stage") != expected.stage:
        raise StaleFileError(
            path,
            str(found.get("config_hash")),
            expected.config_hash,
            str(found.get("stage")),
            expected.stage,
        )
