"""The data-score registry and what every score function receives.

A score maps each training example to a number, higher = harder / more informative; selection
then keeps the hardest or the easiest. A new score is one function registered with
:func:`register_score`::

    @register_score("loss", doc="Cross-entropy of the trained model.")
    def loss_score(ctx: ScoreContext) -> Tensor: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.criteria.registry import KindView, register_criterion
from prunekit.recipes.spec import TrainSpec

__all__ = [
    "DATA_SCORES",
    "DataScore",
    "ScoreContext",
    "compute_scores",
    "register_score",
    "score_options",
]


@dataclass
class ScoreContext:
    """Everything a score may use.

    Attributes:
        data: the training set, any map-style dataset of ``(x, y)`` (never copied).
        num_classes: number of classes.
        make_model: ``f(seed) -> nn.Module``, a fresh untrained model (scores that train).
        model: a trained model (prototypes' default encoder), or None.
        train: the training settings score trainings follow (LR schedule over ``train.epochs``).
        seed: base seed; run ``r`` of a score uses ``seed + r``.
        batch_size: examples per forward pass when scoring.
        device: where scoring runs (default: the device of ``model`` or CPU).
        augment: train-time augmentation ``f(x, generator) -> x`` for score trainings.
        checkpoint_dir: when set, score trainings checkpoint in ``<checkpoint_dir>/seed<s>``
            every ``checkpoint_every`` iterations and resume from there (an interrupted
            scoring picks up where it stopped; forgetting counts are part of the checkpoint).
    """

    data: Any
    num_classes: int
    make_model: Callable[[int], nn.Module] | None = None
    model: nn.Module | None = None
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0
    batch_size: int = 256
    device: torch.device | str | None = None
    augment: Any = None
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int | None = None

    def resolved_device(self) -> torch.device:
        """``device``, else the device of ``model``, else ``train.device`` (``auto``: CUDA
        when available)."""
        from prunekit.core.device import device_of, resolve_device

        if self.device is not None:
            return resolve_device(self.device, "device")
        if self.model is not None and next(self.model.parameters(), None) is not None:
            return device_of(self.model)
        return resolve_device(self.train.device, "train.device")

    def fresh_model(self, seed: int) -> nn.Module:
        if self.make_model is None:
            raise ValueError("make_model: this score trains models; give a model factory")
        return self.make_model(seed)


@dataclass(frozen=True)
class DataScore:
    """A registered data score: ``fn(ctx, **options) -> Tensor`` of one score per example."""

    name: str
    fn: Callable[..., Tensor]
    uses_labels: bool
    kind: str = "data"

    def options(self) -> list[str]:
        """The keyword options the score accepts (``data_prune.options`` keys)."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


# The data scores of the one criteria registry (kind "data"): ``get`` gives the DataScore.
DATA_SCORES = KindView("data", argument="score")


def register_score(name: str, *, doc: str, uses_labels: bool = True) -> Callable:
    """Register ``fn(ctx, *, option=default, ...) -> Tensor`` as the data score ``name``.

    The entry goes into the one criteria registry with kind ``data``; every data score reads the
    training set, so ``requires_data`` is True.
    """

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        return register_criterion(
            name,
            kind="data",
            doc=doc,
            requires_data=True,
            tags=() if uses_labels else ("no labels",),
            factory=DataScore(name, fn, uses_labels),
        )(fn)

    return decorator


def score_options(name: str) -> list[str]:
    """The options data score ``name`` accepts."""
    return DATA_SCORES.get(name, argument="score").options()


def compute_scores(name: str, ctx: ScoreContext, **options: Any) -> Tensor:
    """Score every example of ``ctx.data`` with the registered score ``name`` (float32, CPU)."""
    entry = DATA_SCORES.get(name, argument="score")
    allowed = entry.options()
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"options.{key}: unknown option of score {name!r}; allowed: "
                f"{', '.join(allowed) or 'none'}"
            )
    scores = entry.fn(ctx, **options).detach().to("cpu", torch.float32).reshape(-1)
    if scores.numel() != len(ctx.data):
        raise RuntimeError(
            f"score {name!r} gave {scores.numel()} values for {len(ctx.data)} examples"
        )
    return scores
