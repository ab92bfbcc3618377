"""What the recipes that are one training run from the initialisation share (RigL, GraNet,
pruning at initialisation): their ``phase_1`` stage, the Python API's in-memory context with an
optional Trainer checkpoint directory, and the one-phase result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage, execute
from prunekit.recipes.spec import ExperimentResult, PhaseResult, PruneSpec, TrainSpec

__all__ = ["one_phase_result", "phase_stage", "run_in_memory", "trainer_checkpoint"]

_CHECKPOINT_DIR = "checkpoint_dir"  # ctx.memory key: the API caller's checkpoint directory


def trainer_checkpoint(ctx: RunContext, directory: Path | None) -> Path | None:
    """Where the stage's Trainer checkpoints: ``<stage>/ckpt`` in a run directory; in memory the
    API caller's ``checkpoint_dir`` (None: no checkpoints)."""
    if directory is not None:
        return directory / "ckpt"
    return ctx.memory.get(_CHECKPOINT_DIR)


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
    stages: Callable[[RunContext], list[Stage]],
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    options: Any,
    checkpoint_dir: str | Path | None,
    checkpoint_every: int | None,
) -> RunContext:
    """Run ``stages(ctx)`` in memory; the Trainer checkpoints in ``checkpoint_dir`` (every
    ``checkpoint_every`` steps, default ``train.checkpoint_every``) and resumes from it."""
    if checkpoint_every is not None:
        train = dataclasses.replace(train, checkpoint_every=checkpoint_every)
    memory = {} if checkpoint_dir is None else {_CHECKPOINT_DIR: Path(checkpoint_dir)}
    ctx = RunContext(model, data, train, prune, options=options, memory=memory)
    return execute(stages(ctx), ctx)


def one_phase_result(
    recipe: str, ctx: RunContext, config: dict[str, Any], retrain_iterations: int
) -> ExperimentResult:
    """The API result of a one-stage run: its phase, final metrics, masks and details."""
    phase = PhaseResult(**ctx.phases[0])
    return ExperimentResult(
        recipe,
        {},
        [phase],
        phase.retrained,
        ctx.dense_iterations,
        retrain_iterations,
        config,
        ctx.masks,
        details=ctx.extra["details"],
    )
