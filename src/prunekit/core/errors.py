"""Errors a user can cause and act on; the CLI prints them as one line and exits with code 2.

Every class also derives from the built-in exception that code written against earlier versions
caught (``ValueError``, ``OSError``), so existing ``except ValueError`` blocks keep working.
"""

from __future__ import annotations

import os

__all__ = [
    "DeviceError",
    "DiskFullError",
    "FileFormatError",
    "PrunekitError",
    "StaleFileError",
]


class PrunekitError(Exception):
    """Base class: a problem with the user's input, files or machine, not a bug in prunekit."""


class FileFormatError(PrunekitError, ValueError):
    """A file prunekit reads is missing pieces, truncated, corrupt or not what was expected."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class StaleFileError(FileFormatError):
    """A stored stage output or checkpoint was written by a different config (or stage)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        found: str,
        expected: str,
        found_stage: str | None = None,
        expected_stage: str | None = None,
    ) -> None:
        self.found = found
        self.expected = expected
        where = f" stage {found_stage!r}" if found_stage else ""
        here = f" stage {expected_stage!r}" if expected_stage else ""
        super().__init__(
            path,
            f"written by config hash {found}{where}, but this run has config hash {expected}{here}; "
            "delete the file (or the run directory) to recompute it",
        )


class DiskFullError(PrunekitError, OSError):
    """The disk (or quota) filled up while writing ``path``; earlier files are left as they were."""

    def __init__(
        self, path: str | os.PathLike[str], detail: str = "no space left on device"
    ) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {detail} while writing it; free some space and run again")

    def __str__(self) -> str:
        return str(self.args[0])


class DeviceError(PrunekitError, ValueError):
    """A requested device is not available, or a model's weights are not materialised."""
