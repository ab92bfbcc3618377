"""Gradual magnitude pruning (Zhu and Gupta 2017): a cubic sparsity ramp during one training run.

One stage (``phase_1``): train from the initialisation for ``train.epochs``, pruning (nested) to
``GMP.sparsity_at(t)`` at each of the schedule's steps with the prune spec's criterion.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.schedules import GMP
from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext, masks_for
from prunekit.recipes.executor import Stage
from prunekit.recipes.registry import Recipe, register_recipe, run_recipe
from prunekit.recipes.single_run import during_training_record, fit_from_init
from prunekit.recipes.spec import ExperimentResult, PruneSpec, TrainSpec, spec_dict
from prunekit.training.trainer import Callback, Trainer

__all__ = ["GMPCallback", "GMPOptions", "gmp"]


@dataclass
class GMPOptions:
    """``start_fraction`` / ``end_fraction`` of the run between which the sparsity ramps up;
    ``frequency``: iterations between pruning steps (default: about 100 steps in the ramp)."""

    start_fraction: float = 0.1
    end_fraction: float = 0.6
    frequency: int | None = None


class GMPCallback(Callback):
    """Prunes to ``schedule.sparsity_at(t)`` at each of the schedule's steps during training.

    ``prune(model, target, masks, seed)`` computes the nested masks; by default magnitude
    pruning with global allocation.
    """

    def __init__(self, schedule: GMP, prune: Any = None, seed: int = 0) -> None:
        self.schedule = schedule
        self.prune = prune if callable(prune) else _spec_pruner(prune or PruneSpec())
        self.seed = seed
        self._steps = set(schedule.pruning_steps())
        self.trajectory: list[tuple[int, float]] = []

    def _maybe_prune(self, trainer: Trainer) -> None:
        t = trainer.iteration
        if t not in self._steps:
            return
        target = self.schedule.sparsity_at(t)
        current = trainer.masks.sparsity if trainer.masks is not None else 0.0
        if target <= current and trainer.masks is not None:
            return
        new = self.prune(trainer.model, target, trainer.masks, self.seed + t)
        trainer.set_masks(new)  # attaching applies the new masks at once
        self.trajectory.append((t, new.sparsity))

    def on_fit_start(self, trainer: Trainer) -> None:
        self._maybe_prune(trainer)

    def on_step_end(self, trainer: Trainer, loss: Tensor) -> None:
        self._maybe_prune(trainer)


def _spec_pruner(spec: PruneSpec):
    return functools.partial(masks_for, spec)


def _schedule(ctx: RunContext) -> GMP:
    o: GMPOptions = ctx.options
    return GMP.for_training(
        ctx.prune.sparsity, ctx.original.total, o.start_fraction, o.end_fraction, o.frequency
    )


def _train(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
    schedule = _schedule(ctx)
    callback = GMPCallback(schedule, ctx.compute_masks, seed=ctx.train.seed)
    ctx.log(f"gmp: training {ctx.original.total} iterations, pruning to {ctx.prune.sparsity}")
    trainer = fit_from_init(ctx, directory, callback)
    ctx.masks = trainer.masks if trainer.masks is not None else MaskSet()
    trainer.set_masks(None)
    trajectory = [list(step) for step in callback.trajectory]
    return {**during_training_record(ctx), "trajectory": trajectory}


def _apply(ctx: RunContext, record: dict[str, Any]) -> None:
    record = dict(record)
    ctx.extra["trajectory"] = record.pop("trajectory", [])
    ctx.phases.append(record)
    ctx.dense_iterations = ctx.original.total


def _stages(ctx: RunContext) -> list[Stage]:
    try:
        _schedule(ctx)  # option errors surface before any training
    except ValueError as err:
        raise ValueError(f"gmp_frequency / gmp_start / gmp_end: {err}") from None
    return [Stage("phase_1", _train, _apply, done_file="phase.json")]


def _configure(cfg: Any) -> GMPOptions:
    p = cfg.prune
    return GMPOptions(p.gmp_start, p.gmp_end, p.gmp_frequency)


register_recipe(
    Recipe(
        "gmp",
        "Gradual magnitude pruning during training (cubic schedule).",
        _configure,
        _stages,
        trains_dense=False,
    )
)


def gmp(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    start_fraction: float = 0.1,
    end_fraction: float = 0.6,
    frequency: int | None = None,
) -> ExperimentResult:
    """Gradual magnitude pruning (cubic) during one training run of ``train.epochs``."""
    options = GMPOptions(start_fraction, end_fraction, frequency)
    ctx = run_recipe("gmp", model, data, train, prune, options)
    schedule = _schedule(ctx)
    trajectory = [tuple(step) for step in ctx.extra["trajectory"]]
    config = spec_dict(
        train=train, prune=prune, schedule=schedule.describe(), trajectory=trajectory
    )
    return ctx.result("gmp", config)
