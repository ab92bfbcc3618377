"""Recipes: every published method as a list of resumable stages over one shared context.

A recipe module builds its stages from typed options and registers itself
(:func:`~prunekit.recipes.registry.register_recipe`); ``prunekit run`` and the Python API
functions here run the same stages, the CLI in a run directory (resumable), the API in memory.

>>> from prunekit.recipes import list_recipes
>>> "imp" in list_recipes()
True
"""

from __future__ import annotations

from typing import Any

from prunekit.recipes.registry import (
    RECIPES,
    Recipe,
    get_recipe,
    list_recipes,
    register_recipe,
    schedule_names,
)
from prunekit.recipes.spec import ExperimentResult, PhaseResult, PruneSpec, TrainSpec

__all__ = [
    "RECIPES",
    "ExperimentResult",
    "PhaseResult",
    "PruneSpec",
    "Recipe",
    "TrainSpec",
    "at_init",
    "bimp",
    "data_prune",
    "get_recipe",
    "gmp",
    "granet",
    "imp",
    "list_recipes",
    "one_shot",
    "register_recipe",
    "rigl",
    "sap",
    "schedule_names",
    "sfw",
    "soups",
]

_API = {"one_shot": "prune_retrain", "imp": "prune_retrain", "bimp": "prune_retrain",
        "gmp": "gmp", "data_prune": "data_prune", "soups": "soups", "sfw": "sfw",
        "rigl": "dst", "granet": "dst", "at_init": "at_init", "sap": "sap"}  # fmt: skip


def __getattr__(name: str) -> Any:
    # The API functions load their modules on first use (no import cycle with training).
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"prunekit.recipes.methods.{_API[name]}"), name)
    raise AttributeError(f"module 'prunekit.recipes' has no attribute {name!r}")
