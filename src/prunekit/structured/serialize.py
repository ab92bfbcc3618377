"""Save a pruned model as safetensors + a JSON architecture spec; rebuild it without pickle.

The spec names how to build the *original* architecture (a registered model name, a Hugging Face
class and config, or a ``module:function`` factory) and records, for every module, the shapes of its
tensors and its plain attributes (ints, floats, strings, tuples). Loading builds the model fresh,
re-applies dropped blocks, reshapes tensors, restores attributes, then loads the weights.

The spec is data: loading never imports a ``module:function`` because the file names it. It is
built only from the model registry, a ``transformers`` class (no remote code), or a factory the
caller passes in code (``factory=`` or ``allow_import=``); see :mod:`prunekit.core.safety`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.device import device_of
from prunekit.core.errors import FileFormatError, PrunekitError
from prunekit.core.safety import UnsafeFileError, resolve_callable, resolve_transformers_class
from prunekit.core.serialization import (
    check_state_fits,
    load_safetensors,
    make_dirs,
    read_json,
    save_safetensors,
    write_json,
)

__all__ = ["UnsafeFileError", "load_pruned", "save_pruned"]

FORMAT = "prunekit.structured/1"
_SIMPLE = (int, float, bool, str, type(None))
_SKIP_ATTRS = {"training"}


def _encode(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value):
        return {"__tuple__": list(value)} if isinstance(value, tuple) else list(value)
    if isinstance(value, torch.Size):
        return {"__tuple__": list(value)}
    return _NOT_SIMPLE


_NOT_SIMPLE = object()


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(value["__tuple__"])
    return value


def _module_record(module: nn.Module) -> dict[str, Any]:
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in _SKIP_ATTRS:
            continue
        enc = _encode(value)
        if enc is not _NOT_SIMPLE:
            attrs[key] = enc
    return {
        "class": type(module).__name__,
        "params": {k: list(p.shape) for k, p in module._parameters.items() if p is not None},
        "buffers": {k: list(b.shape) for k, b in module._buffers.items() if b is not None},
        "attrs": attrs,
    }


def _config_record(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        kind, values = "dataclass", dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        kind, values = "hf", config.to_dict()
    else:
        return None
    # Build the unpruned architecture (a pruned config may fail the config's own checks, e.g.
    # hidden 23 with 4 heads) and apply the pruned values after reshaping.
    original = getattr(model, "_prunekit_config0", {})
    pruned = {k: values[k] for k in original if k in values}
    values.update({k: v for k, v in original.items() if k in values})
    return {"kind": kind, "values": values, "pruned": pruned}


def _auto_factory(model: nn.Module) -> dict[str, Any] | None:
    recorded = getattr(model, "prunekit_factory", None)  # set by prunekit.create_model
    if isinstance(recorded, dict):
        return dict(recorded)
    cls = type(model)
    config = getattr(model, "config", None)
    if cls.__module__.startswith("transformers") and hasattr(config, "to_dict"):
        return {
            "kind": "hf",
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "config_class": f"{type(config).__module__}:{type(config).__qualname__}",
        }
    return None


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    factory: str | dict[str, Any] | None = None,
    **factory_kwargs: Any,
) -> Path:
    """Write ``path/model.safetensors`` and ``path/architecture.json``; return the directory.

    ``factory`` says how to build the unpruned architecture in a fresh process:
    a prunekit zoo name (``"resnet56"``, with ``factory_kwargs`` such as ``option="B"``), an
    importable ``"package.module:function"`` called with ``factory_kwargs``, or ``None`` for a
    model made by ``prunekit.create_model`` (which records its name and arguments) or a Hugging
    Face ``transformers`` model (its class and current config are recorded).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if factory is None:
        spec = _auto_factory(model)
        if spec is None:
            raise ValueError(
                "factory: give a prunekit zoo name or a 'module:function' path for models that "
                "are not Hugging Face transformers"
            )
    elif isinstance(factory, str):
        kind = "callable" if ":" in factory else "zoo"
        spec = {"kind": kind, "name": factory, "kwargs": factory_kwargs}
    elif isinstance(factory, dict):
        spec = dict(factory)
    else:
        raise TypeError(f"factory: expected a str, dict or None, got {type(factory).__name__}")
    out = make_dirs(path)
    arch = {
        "format": FORMAT,
        "factory": spec,
        "config": _config_record(model),
        "depth": getattr(model, "_prunekit_depth", None),
        "modules": {name: _module_record(m) for name, m in model.named_modules()},
    }
    # Tied tensors share storage, which safetensors refuses: store independent copies.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update(_derived_buffers(model))
    save_safetensors(state, out / "model.safetensors", {"format": FORMAT})
    write_json(arch, out / "architecture.json")
    return out


def _build(
    spec: Any,
    config: dict[str, Any] | None,
    source: Path,
    factory: Callable[..., nn.Module] | None,
    allow_import: Sequence[str] | str | None,
) -> nn.Module:
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: factory: expected a mapping, got {type(spec).__name__}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"{source}: factory.kwargs: expected a mapping")
    kind = spec.get("kind")
    if factory is not None:
        # The caller said in code how to build the architecture; the file only gives arguments.
        return factory(**kwargs) if kind in ("zoo", "callable") else factory()
    if kind == "zoo":
        from prunekit.models import create_model

        return create_model(spec.get("name"), **kwargs)
    if kind == "callable":
        build = resolve_callable(
            spec.get("name"), source=source, entry="factory.name", allow_import=allow_import
        )
        return build(**kwargs)
    if kind == "hf":
        if not isinstance(config, dict) or not isinstance(config.get("values"), dict):
            raise ValueError(f"{source}: a Hugging Face model needs its config")
        cls = resolve_transformers_class(spec.get("class"), source=source, entry="factory.class")
        config_cls = resolve_transformers_class(
            spec.get("config_class"), source=source, entry="factory.config_class", kind="config"
        )
        values = dict(config["values"])
        for key in ("auto_map", "trust_remote_code"):
            values.pop(key, None)  # remote code is never followed from a saved config
        return cls(config_cls.from_dict(values))
    raise ValueError(f"{source}: factory.kind: expected 'zoo', 'callable' or 'hf', got {kind!r}")


def load_pruned(
    path: str | os.PathLike[str],
    map_location: str = "cpu",
    *,
    factory: Callable[..., nn.Module] | None = None,
    allow_import: Sequence[str] | str | None = None,
) -> nn.Module:
    """Rebuild a model written by :func:`save_pruned` (no pickle, no code named by the file).

    The architecture is built from a registered model name or a ``transformers`` class named in
    ``architecture.json``. A model saved with a ``"module:function"`` factory needs the caller's
    consent: pass the function itself (``factory=build``, called with the saved keyword
    arguments) or the packages it may come from (``allow_import=["mypkg"]``).

    Raises:
        UnsafeFileError: the file names a callable outside the registry, ``transformers`` and
            ``allow_import``.
    """
    root = Path(path)
    arch_file = root / "architecture.json"
    if not arch_file.is_file():
        raise FileNotFoundError(f"path: {str(root)!r} has no architecture.json")
    arch = read_json(arch_file)
    if not isinstance(arch, dict):
        raise FileFormatError(arch_file, "expected a JSON object")
    # The weights are read (and checked) first: every shape below must match a stored tensor,
    # so a corrupt architecture.json cannot make the rebuild allocate more than the file holds.
    state, _ = load_safetensors(root / "model.safetensors")
    derived = {k[len(_DERIVED) :]: state.pop(k) for k in list(state) if k.startswith(_DERIVED)}
    try:
        model = _rebuild(arch, arch_file, {**state, **derived}, factory, allow_import)
    except PrunekitError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, ImportError) as err:
        # A damaged record surfaces as whatever the rebuild trips over: report the file.
        raise FileFormatError(
            arch_file, f"incomplete or corrupt ({type(err).__name__}: {err})"
        ) from None
    check_state_fits(model, state, root / "model.safetensors")
    model.load_state_dict(state, strict=True)
    _restore_derived(model, derived, root / "model.safetensors")
    model.to(map_location)
    _retie(model)
    return model


def _rebuild(
    arch: dict[str, Any],
    arch_file: Path,
    state: dict[str, torch.Tensor],
    factory: Callable[..., nn.Module] | None,
    allow_import: Sequence[str] | str | None,
) -> nn.Module:
    """The model described by ``architecture.json``, with parameters shaped as stored."""
    if arch.get("format") != FORMAT:
        raise ValueError(f"path: unsupported format {arch.get('format')!r}, expected {FORMAT!r}")
    model = _build(arch.get("factory"), arch.get("config"), arch_file, factory, allow_import)
    if arch.get("depth"):
        from prunekit.structured.depth import drop_blocks

        for container, kept in arch["depth"].items():
            drop_blocks(model, container, keep=kept)
    modules = dict(model.named_modules())
    for name, rec in arch["modules"].items():
        module = modules.get(name)
        if module is None:
            raise ValueError(
                f"architecture.json: module {name!r} does not exist in the rebuilt model"
            )
        for pname, shape in rec["params"].items():
            p = module._parameters.get(pname)
            if p is None or list(p.shape) != shape:
                _stored_shape(state, f"{name}.{pname}" if name else pname, shape, arch_file)
                requires_grad = True if p is None else p.requires_grad
                module._parameters[pname] = nn.Parameter(
                    torch.empty(
                        shape,
                        dtype=p.dtype if p is not None else torch.float32,
                        device=device_of(module),
                    ),
                    requires_grad=requires_grad,
                )
        for bname, shape in rec["buffers"].items():
            b = module._buffers.get(bname)
            if b is None or list(b.shape) != shape:
                _stored_shape(state, f"{name}.{bname}" if name else bname, shape, arch_file)
                module._buffers[bname] = torch.empty(
                    shape,
                    dtype=b.dtype if b is not None else torch.float32,
                    device=device_of(module),
                )
        for key, value in rec["attrs"].items():
            if key.startswith("_") or callable(getattr(type(module), key, None)):
                # only plain attributes are saved; a file must not shadow methods or internals
                raise UnsafeFileError(f"{arch_file}: modules.{name}.attrs: refusing key {key!r}")
            setattr(module, key, _decode(value))
    config = arch.get("config")
    if config and config["kind"] == "dataclass" and getattr(model, "config", None) is not None:
        # A Hugging Face model was built from the saved config; a dataclass config is restored.
        for key, value in config["values"].items():
            setattr(model.config, key, value)
    if config and config.get("pruned"):
        # Built from the unpruned values: now the config describes the pruned widths again.
        model.__dict__["_prunekit_config0"] = {k: config["values"][k] for k in config["pruned"]}
        for key, value in config["pruned"].items():
            setattr(model.config, key, value)
    return model


def _stored_shape(state: dict[str, torch.Tensor], key: str, shape: Any, path: Path) -> None:
    """A reshaped tensor must be one model.safetensors stores, with the same shape."""
    stored = state.get(key)
    if stored is None:
        raise FileFormatError(path, f"{key!r} is resized but model.safetensors does not store it")
    if list(stored.shape) != shape:
        raise FileFormatError(
            path, f"{key!r} has shape {shape}, model.safetensors stores {list(stored.shape)}"
        )


def _retie(model: nn.Module) -> None:
    """Re-tie input/output embeddings of Hugging Face models (replacement parameters untie them)."""
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            tie()


# Non-persistent buffers (Gemma's ``embed_scale = sqrt(hidden_size)``) are recomputed from the
# config when a model is built, i.e. from the *pruned* size: save their values and restore them.
_DERIVED = "__prunekit_nonpersistent__."


def _derived_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for mname, module in model.named_modules():
        for bname in getattr(module, "_non_persistent_buffers_set", ()):
            buf = module._buffers.get(bname)
            if buf is not None:
                key = f"{mname}.{bname}" if mname else bname
                found[_DERIVED + key] = buf.detach().clone().contiguous()
    return found


def _restore_derived(model: nn.Module, values: dict[str, torch.Tensor], path: Path) -> None:
    modules = dict(model.named_modules())
    for key, value in values.items():
        mname, _, bname = key.rpartition(".")
        module = modules.get(mname)
        buf = None if module is None else module._buffers.get(bname)
        if buf is None or buf.shape != value.shape:
            raise FileFormatError(path, f"buffer {key!r} does not match the rebuilt model")
        with torch.no_grad():
            buf.copy_(value.to(buf.dtype))
