"""One registry for every kind of criterion: weights, layer-wise LLM rules, channel groups, examples.

Every entry has a name, a **kind**, a factory, a one-line doc and whether it needs data. Names are
unique within a kind; the same name may mean different things in two kinds (``magnitude`` is a
weight criterion and an LLM rule). ``prunekit list``, the LLM engine, structured pruning and data
pruning all read this one registry; the older names (:data:`prunekit.criteria.CRITERIA`,
``STRUCTURED_CRITERIA``, ``DATA_SCORES``, ``prunekit.llm.METHODS``) are views of it.

What the factory is depends on the kind:

- ``weights``: a :class:`~prunekit.criteria.Criterion` subclass (``factory(**options)``).
- ``llm``: the per-layer rule the calibration engine applies to one weight matrix.
- ``structured``: ``fn(model, group, params, **kw) -> list[Tensor]`` scoring a channel group.
- ``data``: a :class:`~prunekit.data_pruning.DataScore` (``score.fn(ctx, **options)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prunekit.core.registry import Registry

__all__ = [
    "KINDS",
    "CriterionEntry",
    "KindInfo",
    "KindView",
    "criterion_names",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    "unregister_criterion",
]


@dataclass(frozen=True)
class KindInfo:
    """How a kind is named in messages and in ``prunekit list``, and who uses it."""

    label: str  # in messages: "unknown <label> 'x'"
    title: str  # the ``prunekit list`` category
    used_by: str  # where a name of this kind is accepted
    builtins: tuple[str, ...]  # modules whose import registers the built-in entries
    optional: bool = False  # the built-ins may be missing from an installation


KINDS: dict[str, KindInfo] = {
    "weights": KindInfo(
        "weight criterion",
        "criteria",
        "prunekit.prune(method=...), prune.criterion",
        ("prunekit.criteria",),
    ),
    "llm": KindInfo(
        "LLM method",
        "llm methods",
        "prunekit prune-llm --method, prunekit.llm.prune_llm(method=...)",
        ("prunekit.llm.methods", "prunekit.llm.sparsegpt"),
    ),
    "structured": KindInfo(
        "structured criterion",
        "structured criteria",
        "prunekit.structured.prune(criterion=...)",
        ("prunekit.structured.criteria",),
    ),
    "data": KindInfo(
        "data score",
        "data scores",
        "data_prune.score, prunekit.data_pruning.compute_scores",
        ("prunekit.data_pruning",),
        optional=True,
    ),
}


@dataclass(frozen=True)
class CriterionEntry:
    """One registered criterion.

    Attributes:
        name: the name users pass (lower case).
        kind: one of :data:`KINDS`.
        factory: what the kind's users call (see the module docstring).
        doc: one line of description.
        requires_data: it needs data beyond the weights (batches, calibration text, gradients or
            the training set).
        tags: short qualifiers shown by ``prunekit list`` (e.g. ``no labels``).
    """

    name: str
    kind: str
    factory: Any
    doc: str
    requires_data: bool
    tags: tuple[str, ...] = ()


# One table per kind inside the one registry: a name is unique within its kind.
_TABLES: dict[str, Registry[CriterionEntry]] = {
    kind: Registry(info.label) for kind, info in KINDS.items()
}
_LOADED: set[str] = set()


def _check_kind(kind: object, argument: str = "kind") -> str:
    if kind not in KINDS:
        raise ValueError(f"{argument}: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return str(kind)


def _load_builtins(kind: str) -> None:
    """Import the modules that register the built-ins of ``kind`` (fixed names, once)."""
    if kind in _LOADED:
        return
    _LOADED.add(kind)  # before importing: a module being imported may read its own kind
    info = KINDS[kind]
    for module in info.builtins:
        try:
            importlib.import_module(module)
        except ImportError:
            if not info.optional:
                _LOADED.discard(kind)
                raise


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else ""


def register_criterion(
    name: str,
    *,
    kind: str = "weights",
    doc: str | None = None,
    requires_data: bool | None = None,
    tags: tuple[str, ...] = (),
    factory: Any = None,
) -> Callable[[Any], Any]:
    """Register a criterion of ``kind``; a decorator returning its argument unchanged.

    ``@register_criterion("snip") class Snip(Criterion): ...`` registers a weight criterion
    (``requires_data`` defaults to the class attribute). ``doc`` defaults to the first line of the
    decorated object's docstring. ``factory`` stores something else than the decorated object (data
    scores store a :class:`~prunekit.data_pruning.DataScore` wrapping the function). A name already
    registered for ``kind`` raises ValueError.
    """
    kind = _check_kind(kind)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    table = _TABLES[kind]

    def decorator(obj: Any) -> Any:
        if name in table:
            raise ValueError(
                f"name: {KINDS[kind].label} {name!r} (kind {kind!r}) is already registered"
            )
        stored = obj if factory is None else factory
        needs = requires_data
        if needs is None:
            needs = bool(getattr(stored, "requires_data", False))
        summary = _first_line(doc if doc is not None else getattr(obj, "__doc__", None))
        entry = CriterionEntry(name.lower(), kind, stored, summary, bool(needs), tuple(tags))
        table.register(name, doc=summary)(entry)
        return obj

    return decorator


def get_criterion(
    name: str, *, kind: str = "weights", argument: str | None = None
) -> CriterionEntry:
    """The entry ``name`` of ``kind``.

    An unknown name raises ValueError naming ``argument`` (default ``"name"``), the kind and the
    valid names of that kind; a name that is not a str raises TypeError.
    """
    kind = _check_kind(kind)
    _load_builtins(kind)
    table = _TABLES[kind]
    argument = argument or "name"
    if not isinstance(name, str):
        raise TypeError(
            f"{argument}: expected a {table.kind} name (str), got {type(name).__name__}"
        )
    if name not in table:
        raise ValueError(
            f"{argument}: unknown {table.kind} {name!r} (kind {kind!r}); "
            f"valid names: {', '.join(table.names())}"
        )
    return table.get(name)


def list_criteria(kind: str | None = None) -> list[CriterionEntry]:
    """Every entry of ``kind`` (all kinds when None), by kind then name."""
    kinds = list(KINDS) if kind is None else [_check_kind(kind)]
    out = []
    for k in kinds:
        _load_builtins(k)
        out.extend(_TABLES[k].get(n) for n in _TABLES[k].names())
    return out


def criterion_names(kind: str = "weights") -> list[str]:
    """The names of ``kind``, sorted."""
    return [entry.name for entry in list_criteria(kind)]


def unregister_criterion(name: str, *, kind: str = "weights") -> None:
    """Remove an entry (for tests and notebooks that register a throw-away criterion)."""
    table = _TABLES[_check_kind(kind)]
    key = name.lower()
    if key not in table:
        raise ValueError(f"name: {table.kind} {name!r} (kind {kind!r}) is not registered")
    table._entries.pop(key)
    table._docs.pop(key)


class KindView:
    """The entries of one kind, with the interface of :class:`~prunekit.core.registry.Registry`.

    ``get`` returns the factory; ``register`` registers into the one registry. The per-package
    names (``CRITERIA``, ``STRUCTURED_CRITERIA``, ``DATA_SCORES``) are such views.
    """

    def __init__(self, kind: str, argument: str = "name") -> None:
        self.kind = _check_kind(kind)
        self.argument = argument

    def register(self, name: str, *, doc: str | None = None, **options: Any) -> Callable:
        """Decorator registering a criterion of this view's kind."""
        return register_criterion(name, kind=self.kind, doc=doc, **options)

    def get(self, name: str, *, argument: str | None = None) -> Any:
        """The factory of ``name``; an unknown name raises ValueError listing the valid names."""
        return get_criterion(name, kind=self.kind, argument=argument or self.argument).factory

    def entry(self, name: str) -> CriterionEntry:
        """The whole registry entry of ``name`` (kind, doc, requires_data, ...)."""
        return get_criterion(name, kind=self.kind, argument=self.argument)

    def names(self) -> list[str]:
        """The names of this kind, sorted."""
        return criterion_names(self.kind)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description."""
        return {e.name: e.doc for e in list_criteria(self.kind)}

    def __contains__(self, name: object) -> bool:
        _load_builtins(self.kind)
        return isinstance(name, str) and name in _TABLES[self.kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"KindView({self.kind!r}: {', '.join(self.names())})"
