"""Command-line flags declared as data, each filling one field of a typed option record.

A command lists its flags once (name, help, the record field it fills); the parser takes each
default from the record unless the flag gives its own, and :func:`record_values` turns the
parsed arguments back into ``{field: value}`` for ``Record.from_values``. Flags that only the
command reads (files, device) have no field.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

__all__ = ["Flag", "add_flags", "field_flags", "flag_error", "record_values"]

_FROM_RECORD: Any = object()  # sentinel: the default is the record field's


@dataclass(frozen=True)
class Flag:
    """One flag: ``--name``, its help (which says the default), and what it fills."""

    name: str
    help: str
    field: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = _FROM_RECORD
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None  # callable: at parser build
    action: str | None = None
    required: bool = False

    @property
    def dest(self) -> str:
        """The attribute argparse stores the value under."""
        return self.name.lstrip("-").replace("-", "_")


def _record_default(record: type | None, flag: Flag) -> Any:
    if flag.default is not _FROM_RECORD:
        return flag.default
    if record is None or flag.field is None:
        return False if flag.action == "store_true" else None
    default = {f.name: f.default for f in fields(record)}[flag.field]
    if default is MISSING:  # a default_factory: the flag must give its own
        raise TypeError(f"{flag.name}: {record.__name__}.{flag.field} needs an explicit default")
    return default


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flags: Iterable[Flag],
    record: type | None = None,
) -> None:
    """Add ``flags`` to ``parser``; a flag without its own default takes ``record``'s."""
    for flag in flags:
        kwargs: dict[str, Any] = {"help": flag.help, "default": _record_default(record, flag)}
        for key in ("type", "choices", "action"):
            if getattr(flag, key) is not None:
                kwargs[key] = getattr(flag, key)
        if callable(flag.choices):  # e.g. a registry's names, read when the parser is built
            kwargs["choices"] = flag.choices()
        if flag.required:
            kwargs["required"] = True
        parser.add_argument(flag.name, **kwargs)


def record_values(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """``{field: parsed value}`` of the flags that fill a record field."""
    return {flag.field: getattr(args, flag.dest) for flag in flags if flag.field}


def field_flags(flags: Iterable[Flag]) -> dict[str, str]:
    """``{field: flag name}``, to name the flag in an error about a field."""
    return {flag.field: flag.name for flag in flags if flag.field}


def flag_error(err: Exception, flags: Mapping[str, str], context: str) -> ValueError:
    """``err`` from an option record ("field: message") reworded to name the flag; other
    messages are prefixed with ``context`` (the option that asked for the check)."""
    field, sep, rest = str(err).partition(": ")
    if sep and field in flags:
        return ValueError(f"{flags[field]}: {rest}")
    return ValueError(f"{context}: {err}")
