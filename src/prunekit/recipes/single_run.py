"""What the recipes that are one training run from the initialisation share (GMP, RigL, GraNet,
pruning at initialisation): their ``phase_1`` stage, the training run and its record, and the
Python API's in-memory run with an optional Trainer checkpoint directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage
from prunekit.recipes.registry import run_recipe
from prunekit.recipes.spec import PruneSpec, TrainSpec
from prunekit.training.trainer import Callback, Trainer

__all__ = [
    "during_training_record",
    "fit_from_init",
    "phase_stage",
    "run_in_memory",
    "trainer_checkpoint",
]

_CHECKPOINT_DIR = "checkpoint_dir"  # ctx.memory key: the API caller's checkpoint directory


def trainer_checkpoint(ctx: RunContext, directory: Path | None) -> Path | None:
    """Where the stage's Trainer checkpoints: ``<stage>/ckpt`` in a run directory; in memory the
    API caller's ``checkpoint_dir`` (None: no checkpoints)."""
    if directory is not None:
        return directory / "ckpt"
    return ctx.memory.get(_CHECKPOINT_DIR)


def fit_from_init(ctx: RunContext, directory: Path | None, callback: Callback) -> Trainer:
    """Train ``ctx.model`` over the dense run's schedule with ``callback`` pruning during it
    (checkpoints in :func:`trainer_checkpoint`); returns the Trainer."""
    ckpt = trainer_checkpoint(ctx, directory)
    return ctx.fit(ctx.original, ctx.original.total, None, ctx.train.seed, ckpt, [callback])


def during_training_record(ctx: RunContext) -> dict[str, Any]:
    """The phase record of a recipe that pruned to ``ctx.masks`` during its one training run
    (the model's metrics are measured now)."""
    final = ctx.metrics()
    return {
        "phase": 1,
        "target_sparsity": ctx.prune.sparsity,
        "sparsity": ctx.masks.sparsity if ctx.masks is not None else 0.0,
        "retrain_schedule": "during_training",
        "retrain_iterations": 0,
        "lr0": ctx.original.lr_at(0),
        "pruned": final,
        "retrained": final,
    }


def _apply(ctx: RunContext, record: dict[str, Any]) -> None:
    record = dict(record)
    ctx.extra["details"] = record.pop("details")
    ctx.phases.append(record)


def phase_stage(
    run: Callable[[RunContext, Path | None], dict[str, Any]],
    after: Callable[[RunContext], None] | None = None,
) -> Stage:
    """The recipe's one stage, ``phase_1``: ``run`` returns a phase record with a ``details``
    entry, which goes to ``ctx.extra["details"]``; ``after(ctx)`` then runs on both paths."""

    def apply(ctx: RunContext, record: dict[str, Any]) -> None:
        _apply(ctx, record)
        if after is not None:
            after(ctx)

    return Stage("phase_1", run, apply, done_file="phase.json")


def run_in_memory(
    name: str,
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    options: Any,
    checkpoint_dir: str | Path | None,
    checkpoint_every: int | None,
) -> RunContext:
    """Run recipe ``name`` in memory (:func:`~prunekit.recipes.registry.run_recipe`); the
    Trainer checkpoints in ``checkpoint_dir`` (every ``checkpoint_every`` steps, default
    ``train.checkpoint_every``) and resumes from it."""
    if checkpoint_every is not None:
        train = dataclasses.replace(train, checkpoint_every=checkpoint_every)
    memory = {} if checkpoint_dir is None else {_CHECKPOINT_DIR: Path(checkpoint_dir)}
    return run_recipe(name, model, data, train, prune, options, memory=memory)
