"""Criteria: how important is each weight. Each criterion is registered by name.

A criterion only computes scores (higher = more important); the allocation turns scores into masks.
Register a new one with :func:`register_criterion` and every invariant test covers it. The registry
(:mod:`prunekit.criteria.registry`) also holds the LLM, structured and data-score criteria, each
entry with its kind; :data:`CRITERIA` is its view of the weight criteria.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.core.scores import Scores
from prunekit.criteria.registry import (
    CriterionEntry,
    KindView,
    criterion_names,
    get_criterion,
    list_criteria,
    register_criterion,
    unregister_criterion,
)

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionEntry",
    "create_criterion",
    "criterion_names",
    "get_criterion",
    "list_criteria",
    "list_methods",
    "register_criterion",
    "unregister_criterion",
]


class Criterion:
    """Base class. Subclasses implement :meth:`scores`.

    Attributes:
        requires_data: the criterion needs ``data`` (an iterable of ``(inputs, targets)`` batches).
        elementwise_of_weights: the scores are a function of each weight alone, so a non-finite
            score always means a non-finite weight (lets ``prune`` skip a separate check).
        target_aware: :meth:`scores` also takes ``sparsity=`` (the target) and ``masks=`` (earlier
            keep-masks by name); ``prune`` passes them. For criteria that prune iteratively
            inside (SynFlow), whose scores depend on how far pruning goes.
    """

    requires_data: bool = False
    elementwise_of_weights: bool = False
    target_aware: bool = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(
                f"criterion {type(self).__name__}: unexpected options {sorted(options)}"
            )

    def scores(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        *,
        data: Iterable[Any] | None = None,
        seed: int = 0,
    ) -> Scores:
        raise NotImplementedError


# The weight criteria of the one registry: ``CRITERIA.get(name)`` is the Criterion subclass.
CRITERIA = KindView("weights", argument="method")


def create_criterion(name: str, **options: Any) -> Criterion:
    """Instantiate a registered weight criterion; an unknown name lists the valid ones."""
    return CRITERIA.get(name, argument="method")(**options)


def list_methods() -> list[str]:
    """Names of every registered weight criterion (``list_criteria("weights")`` has their docs)."""
    return CRITERIA.names()


from prunekit.criteria import basic as _basic  # noqa: E402,F401  (registers the built-ins)
from prunekit.criteria import gradient as _gradient  # noqa: E402,F401
from prunekit.criteria import synflow as _synflow  # noqa: E402,F401
