"""A small model zoo for experiments; every prunekit function also accepts any ``nn.Module``."""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.core.registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    """Decorator registering a model factory under ``name``."""
    return MODELS.register(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("resnet20", num_classes=10)``."""
    factory = MODELS.get(name, argument="model")
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise TypeError(f"model {name!r}: {err}") from err
    # Remember how to rebuild the architecture (e.g. for structured.save_pruned in a new process).
    model.prunekit_factory = {"kind": "zoo", "name": name.lower(), "kwargs": dict(kwargs)}
    return model


def list_models() -> list[str]:
    """Names of the registered models."""
    return MODELS.names()


from prunekit.models import gpt, mlp, resnet, vgg, vit, wrn  # noqa: E402,F401  (register the zoo)
from prunekit.models.gpt import GPT, GPTConfig  # noqa: E402
from prunekit.models.mlp import MLP  # noqa: E402

__all__ = ["GPT", "GPTConfig", "MLP", "MODELS", "create_model", "list_models", "register_model"]
