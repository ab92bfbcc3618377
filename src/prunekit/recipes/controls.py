"""The controls of pruning experiments: dense training, a fixed mask trained from given weights,
and Scratch-E / Scratch-B (Liu et al. 2019). They run on the same :class:`RunContext` building
blocks as the recipes, in memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext
from prunekit.recipes.spec import PruneSpec, TrainSpec
from prunekit.training.controls import count_flops, scratch_iterations
from prunekit.training.lr import LRSchedule, make_lr_schedule

__all__ = ["run_dense", "run_scratch", "run_sparse_training"]


def run_dense(model: nn.Module, data: DatasetBundle, train: TrainSpec) -> dict[str, float]:
    """Train ``model`` densely with ``train``; return its validation / test metrics."""
    ctx = RunContext(model, data, train, PruneSpec())
    ctx.fit(ctx.original, ctx.original.total, None, train.seed, None)
    return ctx.metrics()


def run_sparse_training(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    masks: MaskSet,
    *,
    iterations: int | None = None,
    init_state: dict[str, Tensor] | None = None,
    schedule: LRSchedule | None = None,
) -> dict[str, float]:
    """Train a fixed mask from ``init_state`` (or the model's current weights) with ``train``.

    With ``iterations`` the original schedule's shape is stretched to that length (Scratch-B);
    ``schedule`` overrides the LR schedule (its length is then the run's length).
    """
    ctx = RunContext(model, data, train, PruneSpec())
    if init_state is not None:
        model.load_state_dict(init_state)
    masks.apply(model)
    if schedule is not None:
        total = schedule.total
    else:
        total = ctx.original.total if iterations is None else iterations
        schedule = (
            ctx.original
            if total == ctx.original.total
            else make_lr_schedule(train.lr_schedule, train.lr, total)
        )
    if total > 0:
        ctx.fit(schedule, total, masks, train.seed, None)
    return ctx.metrics()


def run_scratch(
    factory: Callable[[], nn.Module],
    data: DatasetBundle,
    train: TrainSpec,
    masks: MaskSet,
    *,
    mode: str = "B",
    seed: int = 0,
) -> dict[str, float]:
    """Scratch-E / Scratch-B control (Liu et al. 2019): the pruned network trained from a fresh init.

    ``factory()`` builds the architecture (under ``torch.manual_seed(seed)``); ``masks`` fix its
    sparsity. Scratch-E trains for the original number of iterations, Scratch-B for
    ``iterations * FLOPs_dense / FLOPs_pruned`` (at most 2x). Returns the metrics plus
    ``"iterations"``.
    """
    torch.manual_seed(int(seed))
    model = factory()
    original = RunContext(model, data, train, PruneSpec()).original
    example = data.train.x[:1]
    dense_flops = count_flops(model, example)
    sparse_flops = count_flops(model, example, masks)
    total = scratch_iterations(original.total, dense_flops, sparse_flops, mode)
    metrics = run_sparse_training(model, data, train, masks, iterations=total)
    return {**metrics, "iterations": float(total)}
