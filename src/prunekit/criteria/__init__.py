"""Criteria: how important is each weight. Each criterion is registered by name.

A criterion only computes scores (higher = more important); the allocation turns scores into masks.
Register a new one with :func:`register_criterion` and every invariant test covers it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.core.registry import Registry
from prunekit.core.scores import Scores


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


CRITERIA: Registry[type[Criterion]] = Registry("method")


def register_criterion(name: str):
    """Class decorator: ``@register_criterion("snip") class Snip(Criterion): ...``."""
    return CRITERIA.register(name)


def create_criterion(name: str, **options: Any) -> Criterion:
    """Instantiate a registered criterion; an unknown name lists the valid ones."""
    return CRITERIA.get(name, argument="method")(**options)


def list_methods() -> list[str]:
    """Names of every registered pruning criterion."""
    return CRITERIA.names()


from prunekit.criteria import basic as _basic  # noqa: E402,F401  (registers the built-ins)
from prunekit.criteria import gradient as _gradient  # noqa: E402,F401
from prunekit.criteria import synflow as _synflow  # noqa: E402,F401
