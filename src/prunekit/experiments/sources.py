"""The user's own model and data in a config: ``module:function`` factories and local HF folders.

Trust rule: a ``module:function`` is imported only when the caller allows it, i.e. for the config
file the user runs (``prunekit run my.yaml``) or when code passes ``allow_import=`` /
``factory=``. A spec read back from a run directory or a results folder is data: it is never
imported on the file's say-so. Hugging Face classes are resolved by name from ``transformers``
(``trust_remote_code=False``, local files only), which runs no code from the model folder.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn

from prunekit.experiments.typed import ConfigError

__all__ = [
    "HFClassifier",
    "ImportNotAllowedError",
    "check_factory_spec",
    "check_hf_class_name",
    "hf_class",
    "load_hf_pretrained",
    "resolve_callable",
]

_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


class ImportNotAllowedError(ConfigError):
    """A ``module:function`` would be imported without the caller allowing it."""


def check_factory_spec(spec: str, key: str) -> None:
    """``spec`` has the form ``package.module:function`` (checked without importing)."""
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ConfigError(f"{key}: expected 'package.module:function', got {spec!r}")


def check_hf_class_name(name: str, key: str) -> None:
    """``name`` looks like a transformers class name (resolved later, by name only)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Z]\w*", name):
        raise ConfigError(
            f"{key}: expected a transformers class name such as "
            f"AutoModelForSequenceClassification, got {name!r}"
        )


@contextlib.contextmanager
def _search_path(folder: str | None) -> Iterator[None]:
    if folder is None or folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def resolve_callable(
    spec: str,
    *,
    key: str,
    allow_import: bool | Sequence[str] = False,
    search_path: str | None = None,
) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the callable: the one place that does.

    Args:
        spec: ``"mypkg.models:build"``.
        key: the config key or argument named in errors (``model.factory``).
        allow_import: True for the user's own config; a list of module prefixes
            (``["mypkg"]`` admits ``mypkg:f`` and ``mypkg.models:f``) allows only those; False
            (the default) refuses every import.
        search_path: a folder searched first (the config file's folder).
    """
    check_factory_spec(spec, key)
    module_name, attr = spec.split(":", 1)
    top = module_name.split(".")[0]
    prefixes = () if isinstance(allow_import, (bool, str)) else tuple(allow_import or ())
    allowed = allow_import is True or any(
        module_name == p or module_name.startswith(f"{p}.") for p in prefixes
    )
    if not allowed:
        raise ImportNotAllowedError(
            f"{key}: {spec!r} names Python code; prunekit imports a module:function only from "
            f"the config file you run (in Python: load_config(path, allow_import=True)), or when "
            f"the caller allows it: allow_import=[{top!r}] or factory= in code, "
            f"--allow-import {top} on the command line"
        )
    with _search_path(search_path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            where = f" (searched {search_path!r} and sys.path)" if search_path else ""
            raise ConfigError(f"{key}: cannot import {module_name!r}{where}: {err}") from None
    obj: Any = module
    for part in attr.split("."):
        if part.startswith("_"):
            raise ConfigError(f"{key}: {spec!r} names a private attribute")
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return obj


def hf_class(name: str, key: str = "model.class") -> type:
    """A transformers model class by name (e.g. ``AutoModelForSequenceClassification``)."""
    check_hf_class_name(name, key)
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{key}: needs the 'transformers' package") from None
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        raise ConfigError(f"{key}: transformers has no model class {name!r}")
    return cls


def load_hf_pretrained(folder: str, class_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``class.from_pretrained(folder)`` from local files, never running the folder's code."""
    from pathlib import Path

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model.hf: no such folder {folder!r}")
    cls = hf_class(class_name)
    return cls.from_pretrained(folder, trust_remote_code=False, local_files_only=True, **kwargs)


class HFClassifier(nn.Module):
    """A transformers model seen as ``logits = model(x)`` (what prunekit's trainer expects).

    ``x`` is the model's first input (``input_ids`` for text, ``pixel_values`` for images); the
    transformers model stays available as ``.model`` (e.g. for ``save_pretrained``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> Any:
        out = self.model(x)
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out[0]


# ---------------------------------------------------------------------- model specs
def _signature_guesses(factory: Any, data: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus input / output sizes from the data set that ``factory`` takes."""
    import inspect
    import math

    kwargs = dict(kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    shape = tuple(int(s) for s in data.input_shape)
    guesses: dict[str, Any] = {"num_classes": data.num_classes}
    if data.task == "lm":
        guesses = {"vocab_size": data.num_classes}
    if len(shape) == 1:
        guesses["length"] = shape[0]
    if len(shape) == 3:
        guesses["in_channels"] = shape[0]
        guesses["image_size"] = shape[-1]
    guesses["in_features"] = math.prod(shape)
    if data.task == "lm" and len(shape) == 1:
        guesses["block_size"] = shape[0]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in guesses.items():
        # A factory taking **kwargs (e.g. gpt) gets only the language-model sizes.
        accepted = key in params or (
            var_kw and data.task == "lm" and key in ("vocab_size", "block_size")
        )
        if accepted and key not in kwargs:
            kwargs[key] = value
    return kwargs


def model_spec(cfg: Any, data: Any) -> dict[str, Any]:
    """The fully resolved model of ``cfg`` (data-dependent sizes filled in), as plain data.

    ``{"kind": "zoo", "name", "kwargs"}``, ``{"kind": "factory", "factory", "kwargs"}`` or
    ``{"kind": "hf", "class", "source", "kwargs"}``; recorded as ``model_spec.json`` in a run.
    """
    m = cfg.model
    if m.hf is not None:
        kwargs = dict(m.kwargs)
        if m.hf_class.endswith(("SequenceClassification", "ImageClassification")):
            kwargs.setdefault("num_labels", data.num_classes)
        return {"kind": "hf", "class": m.hf_class, "source": m.hf, "kwargs": kwargs}
    if m.factory is not None:
        fn = resolve_callable(
            m.factory, key="model.factory", allow_import=cfg.allow_import,
            search_path=cfg.source_dir,
        )  # fmt: skip
        kwargs = _signature_guesses(fn, data, m.kwargs)
        return {"kind": "factory", "factory": m.factory, "kwargs": kwargs}
    from prunekit.models import MODELS

    kwargs = _signature_guesses(MODELS.get(m.name, argument="model.name"), data, m.kwargs)
    return {"kind": "zoo", "name": m.name, "kwargs": kwargs}


def build_from_spec(
    spec: dict[str, Any],
    *,
    allow_import: bool | Sequence[str] = False,
    factory: Callable[..., nn.Module] | None = None,
    search_path: str | None = None,
) -> nn.Module:
    """Build the model a spec describes (weights: its initialisation, or the HF checkpoint).

    A ``factory`` spec imports its ``module:function`` only under ``allow_import`` (or uses the
    ``factory`` callable given); an ``hf`` spec holding ``hf_config`` (a run's record) is built
    from that config alone, otherwise loaded with ``from_pretrained`` from ``source``.
    """
    kind = spec.get("kind")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"model spec: kwargs must be a mapping, got {type(kwargs).__name__}")
    if kind == "zoo":
        from prunekit.models import create_model

        return create_model(str(spec.get("name")), **kwargs)
    if kind == "factory":
        fn = factory or resolve_callable(
            str(spec.get("factory")), key="model.factory", allow_import=allow_import,
            search_path=search_path,
        )  # fmt: skip
        model = fn(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model.factory: {spec.get('factory')!r} returned {type(model).__name__}, "
                "expected a torch.nn.Module"
            )
        return model
    if kind == "hf":
        if "hf_config" in spec:
            return HFClassifier(_hf_from_config(str(spec.get("class")), spec["hf_config"]))
        return HFClassifier(load_hf_pretrained(str(spec["source"]), str(spec["class"]), kwargs))
    raise ValueError(f"model spec: unknown kind {kind!r}; expected zoo, factory or hf")


def hf_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """The transformers config of an :class:`HFClassifier` as plain data (None otherwise)."""
    if isinstance(model, HFClassifier) and hasattr(model.model, "config"):
        return model.model.config.to_dict()
    return None


def _hf_from_config(class_name: str, config: dict[str, Any]) -> nn.Module:
    """An HF model of ``class_name`` built from a recorded config (no weights, no folder)."""
    import transformers

    cls = hf_class(class_name)
    config = dict(config)
    model_type = config.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ValueError("model spec: hf_config holds no model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **config)
    if hasattr(cls, "from_config"):
        try:
            return cls.from_config(hf_cfg, trust_remote_code=False)
        except TypeError:
            return cls.from_config(hf_cfg)
    return cls(hf_cfg)


def build_user_data(cfg: Any) -> Any:
    """``data.factory(**data.kwargs)``: the user's own data as a DatasetBundle."""
    from prunekit.data.base import DatasetBundle

    fn = resolve_callable(
        cfg.data.factory, key="data.factory", allow_import=cfg.allow_import,
        search_path=cfg.source_dir,
    )  # fmt: skip
    bundle = fn(**cfg.data.kwargs)
    if not isinstance(bundle, DatasetBundle):
        raise TypeError(
            f"data.factory: {cfg.data.factory!r} returned {type(bundle).__name__}, expected a "
            "prunekit.data.DatasetBundle (build one with DatasetBundle.from_datasets)"
        )
    return bundle


def check_sources(cfg: Any) -> None:
    """Before any work: the user's factories import (when allowed), the HF class and folder
    exist, ``dense_checkpoint`` is a file. Errors name the config key."""
    from pathlib import Path

    for key, spec in (("model.factory", cfg.model.factory), ("data.factory", cfg.data.factory)):
        if spec is not None:
            resolve_callable(
                spec, key=key, allow_import=cfg.allow_import, search_path=cfg.source_dir
            )
    if cfg.model.hf is not None:
        hf_class(cfg.model.hf_class)
        if not Path(cfg.model.hf).is_dir():
            raise FileNotFoundError(f"model.hf: no such folder {cfg.model.hf!r}")
    if cfg.dense_checkpoint is not None and not Path(cfg.dense_checkpoint).is_file():
        raise FileNotFoundError(f"dense_checkpoint: no such file {cfg.dense_checkpoint!r}")


def written_by_a_run(config_path: str | Any) -> bool:
    """True for a ``config.yaml`` inside a run directory (prunekit wrote it): such a file is
    data from an output folder, so its ``module:function`` factories are never imported."""
    from pathlib import Path

    folder = Path(config_path).resolve().parent
    named_like_a_run = folder.parent.name == "runs" and re.search(r"-[0-9a-f]{10}$", folder.name)
    return bool(named_like_a_run) or any(
        (folder / name).is_file() for name in ("model_spec.json", "result.json")
    )
