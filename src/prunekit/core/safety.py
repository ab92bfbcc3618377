"""Files are data: resolve callables only from trusted sources, never from a name read in a file.

A file prunekit reads (``architecture.json``, a run directory's config, results, masks metadata)
may come from someone else. Such a file may *name* a model, but the name is looked up only in

* the model registry (names prunekit registers and names the user registers in their own
  process with :func:`prunekit.models.register_model`),
* the ``transformers`` package, for real model / config classes (never remote code), or
* a ``module:function`` whose module the *caller* allowed in code (``allow_import=["mypkg"]``).

Anything else raises :class:`UnsafeFileError` naming the file and the entry.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prunekit.core.errors import PrunekitError

__all__ = [
    "UnsafeFileError",
    "check_allow_import",
    "is_output_file",
    "resolve_callable",
    "resolve_transformers_class",
]


class UnsafeFileError(PrunekitError, ValueError):
    """A file asked prunekit to do something it never does for a file: import or run code named
    in it, or write through a symlink planted in an output folder."""


def check_allow_import(allow_import: Sequence[str] | str | None) -> tuple[str, ...]:
    """Normalise an ``allow_import`` argument to a tuple of module prefixes.

    Raises:
        TypeError: ``allow_import`` is not a sequence of non-empty strings.
    """
    if allow_import is None:
        return ()
    if isinstance(allow_import, str):
        allow_import = [allow_import]
    prefixes = tuple(allow_import)
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.strip(". "):
            raise TypeError(f"allow_import: expected module names such as 'mypkg', got {prefix!r}")
    return tuple(p.strip(".") for p in prefixes)


def _allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def resolve_callable(
    name: str,
    *,
    source: str | os.PathLike[str],
    entry: str,
    registry: Callable[[str], Any] | None = None,
    allow_import: Sequence[str] | str | None = None,
) -> Callable[..., Any]:
    """The callable a file names, looked up only where the caller trusts.

    Args:
        name: the name read from the file: a registry name (``"resnet20"``) or
            ``"package.module:function"``.
        source: the file the name was read from (named in errors).
        entry: the key in that file (named in errors), e.g. ``"factory.name"``.
        registry: looks a plain name up (e.g. ``prunekit.models.MODELS.get``); ``None`` refuses
            plain names.
        allow_import: module prefixes the caller allows to be imported (``["mypkg"]`` admits
            ``mypkg:build`` and ``mypkg.models:build``). Empty: nothing is imported.

    Raises:
        UnsafeFileError: the name is outside the registry and the allowed prefixes.
    """
    prefixes = check_allow_import(allow_import)
    where = f"{os.fspath(source)}: {entry}"
    if not isinstance(name, str) or not name:
        raise UnsafeFileError(f"{where}: expected a name, got {name!r}")
    if ":" not in name:
        if registry is None:
            raise UnsafeFileError(f"{where}: {name!r} is not something prunekit can look up")
        return registry(name)
    module, _, attr = name.partition(":")
    if not _allowed(module, prefixes):
        raise UnsafeFileError(
            f"{where}: refusing to import {name!r} named in a file; pass the factory in code "
            f"(factory=...) or allow its package (allow_import=[{module.split('.')[0]!r}])"
        )
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        if part.startswith("_"):
            raise UnsafeFileError(f"{where}: {name!r} names a private attribute")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnsafeFileError(f"{where}: {name!r} is not callable")
    return obj


def resolve_transformers_class(
    name: str, *, source: str | os.PathLike[str], entry: str, kind: str = "model"
) -> type:
    """A ``transformers`` model (``kind="model"``) or config (``kind="config"``) class by name.

    ``name`` may be ``"GPT2LMHeadModel"`` or ``"transformers.models.gpt2...:GPT2LMHeadModel"``;
    only the class name is used and it must be an attribute of the ``transformers`` package that
    subclasses ``PreTrainedModel`` (or ``PretrainedConfig``). No remote code is ever involved.

    Raises:
        UnsafeFileError: the name is not such a class.
    """
    import transformers

    where = f"{os.fspath(source)}: {entry}"
    if not isinstance(name, str) or not name:
        raise UnsafeFileError(f"{where}: expected a transformers class name, got {name!r}")
    module, sep, attr = name.rpartition(":")
    if sep and not (module == "transformers" or module.startswith("transformers.")):
        raise UnsafeFileError(
            f"{where}: refusing {name!r}: only classes of the transformers package are loaded "
            "from a file"
        )
    cls_name = (attr if sep else name).rsplit(".", 1)[-1]
    base = transformers.PreTrainedModel if kind == "model" else transformers.PretrainedConfig
    cls = getattr(transformers, cls_name, None) if cls_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UnsafeFileError(
            f"{where}: {name!r} is not a transformers {kind} class "
            f"(expected a subclass of {base.__name__} exported by transformers)"
        )
    return cls


# Files prunekit writes into an output folder: a folder holding one of them is prunekit output.
_OUTPUT_MARKERS = (
    ("results.sqlite",),
    ("result.json",),
    ("architecture.json",),
    ("config.yaml", "log.txt"),  # a run directory before its result
)


def is_output_file(path: str | os.PathLike[str], levels: int = 4) -> bool:
    """Whether ``path`` lies in a prunekit output folder (a run directory, a results folder, a
    saved model) within ``levels`` folders up: such a file is data, never a source of code.

    A config re-read from a run directory must not import a ``module:function`` even when the
    same config, written by the user, could: callers pass ``allow_import=()`` when this is True.
    """
    folder = Path(os.path.abspath(path)).parent
    for _ in range(levels):
        if any(all((folder / n).exists() for n in names) for names in _OUTPUT_MARKERS):
            return True
        if folder.parent == folder:
            break
        folder = folder.parent
    return False
