"""A small name -> factory registry shared by criteria, allocations, schedules and models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories) and lists them for discovery.

    >>> models = Registry("model")
    >>> @models.register("mlp")
    ... def mlp(): ...
    >>> models.names()
    ['mlp']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, *, doc: str | None = None) -> Callable[[T], T]:
        key = name.lower()

        def decorator(obj: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = obj
            summary = doc if doc is not None else (getattr(obj, "__doc__", None) or "")
            self._docs[key] = summary.strip().splitlines()[0] if summary.strip() else ""
            return obj

        return decorator

    def get(self, name: str, *, argument: str | None = None) -> T:
        """Return the entry for ``name``; an unknown name raises a ValueError listing valid names."""
        if not isinstance(name, str):
            raise TypeError(
                f"{argument or self.kind}: expected a {self.kind} name (str), got {type(name).__name__}"
            )
        key = name.lower()
        if key not in self._entries:
            raise ValueError(
                f"{argument or self.kind}: unknown {self.kind} {name!r}; "
                f"valid names: {', '.join(self.names())}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description, for ``prunekit list``."""
        return {name: self._docs[name] for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
