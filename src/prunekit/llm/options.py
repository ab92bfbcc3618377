"""Typed option records that the Python API and the command line fill the same way.

A public function such as :func:`prunekit.llm.prune_llm` takes its options as keyword
arguments and gathers them into a record (``Record.from_values(locals())``); the command line
builds the same record from its flags and passes ``**record.kwargs()`` back to that function,
so both run one code path with one set of defaults and one validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["OptionRecord"]

_R = TypeVar("_R", bound="OptionRecord")


class OptionRecord:
    """Mixin for option dataclasses: build from a mapping, hand back as keyword arguments."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_values(cls: type[_R], values: Mapping[str, Any], skip: Sequence[str] = ()) -> _R:
        """The record from the entries of ``values`` named like a field (other keys ignored)."""
        names = set(cls.field_names()) - set(skip)
        return cls(**{key: value for key, value in values.items() if key in names})

    def kwargs(self, skip: Sequence[str] = ()) -> dict[str, Any]:
        """The options as keyword arguments of the function the record belongs to."""
        return {name: getattr(self, name) for name in self.field_names() if name not in skip}
