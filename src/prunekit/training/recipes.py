"""Training helpers the recipes share, and the controls of pruning experiments.

* :func:`run_dense`: train a model densely.
* :func:`run_sparse_training`: train a fixed mask from given weights (controls).
* :func:`run_scratch`: Scratch-E / Scratch-B training of the pruned network from a fresh init.

The prune-retrain recipes live in :mod:`prunekit.recipes` (``run_one_shot``, ``run_imp``,
``run_bimp`` and ``run_gmp`` here are the same functions under their earlier names).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.prune import compute_masks
from prunekit.data.base import DatasetBundle
from prunekit.recipes.methods.gmp import GMPCallback  # noqa: E402
from prunekit.recipes.methods.gmp import gmp as run_gmp  # noqa: E402
from prunekit.recipes.methods.prune_retrain import bimp as run_bimp  # noqa: E402
from prunekit.recipes.methods.prune_retrain import imp as run_imp  # noqa: E402
from prunekit.recipes.methods.prune_retrain import one_shot as run_one_shot  # noqa: E402
from prunekit.recipes.methods.prune_retrain import pruning_norm_change  # noqa: E402
from prunekit.recipes.spec import (  # noqa: E402
    ExperimentResult,
    PhaseResult,
    PruneSpec,
    TrainSpec,
    spec_dict,
)
from prunekit.training.controls import count_flops, scratch_iterations
from prunekit.training.lr import (
    LRSchedule,
    make_lr_schedule,
    make_retrain_schedule,
)
from prunekit.training.trainer import Callback, Trainer, evaluate, make_optimizer

_config = spec_dict  # the recipes of this package record their arguments with it

__all__ = [
    "ExperimentResult",
    "GMPCallback",
    "PhaseResult",
    "PruneSpec",
    "TrainSpec",
    "pruning_norm_change",
    "run_bimp",
    "run_dense",
    "run_gmp",
    "run_imp",
    "run_one_shot",
    "run_scratch",
    "run_sparse_training",
]


# ---------------------------------------------------------------------- shared helpers
def iterations_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps in one epoch (the last, smaller batch included)."""
    return max(1, math.ceil(num_examples / batch_size))


def original_schedule(spec: TrainSpec, data: DatasetBundle) -> LRSchedule:
    """The LR schedule of the dense run described by ``spec``."""
    total = int(round(spec.epochs * iterations_per_epoch(len(data.train), spec.batch_size)))
    return make_lr_schedule(spec.lr_schedule, spec.lr, max(total, 1))


def _epochs_to_iterations(epochs: float, spec: TrainSpec, data: DatasetBundle) -> int:
    if epochs < 0:
        raise ValueError(f"epochs: expected a non-negative number, got {epochs}")
    return int(round(epochs * iterations_per_epoch(len(data.train), spec.batch_size)))


def _train(
    model: nn.Module,
    data: DatasetBundle,
    spec: TrainSpec,
    schedule: LRSchedule,
    iterations: int,
    masks: MaskSet | None,
    seed_offset: int,
    callbacks: list[Callback] | None = None,
) -> None:
    if iterations <= 0:
        return
    optimizer = make_optimizer(
        model, spec.optimizer, spec.lr, spec.momentum, spec.weight_decay, spec.nesterov
    )
    Trainer(
        model,
        data.train,
        optimizer=optimizer,
        lr_schedule=schedule,
        iterations=iterations,
        batch_size=spec.batch_size,
        masks=masks,
        task=data.task,
        augment=data.augment,
        device=spec.device,
        seed=spec.seed + seed_offset,
        callbacks=callbacks or [],
        progress=spec.progress,
    ).fit(resume=False)


def _metrics(model: nn.Module, data: DatasetBundle) -> dict[str, float]:
    out: dict[str, float] = {}
    if len(data.val):
        out.update({f"val_{k}": v for k, v in evaluate(model, data.val, task=data.task).items()})
    out.update({f"test_{k}": v for k, v in evaluate(model, data.test, task=data.task).items()})
    return out


def _prune_step(
    model: nn.Module, prune: PruneSpec, target: float, masks: MaskSet | None, seed: int
) -> MaskSet:
    return compute_masks(
        model,
        target,
        prune.method,
        prune.allocation,
        targets=prune.targets,
        masks=masks,
        min_keep=prune.min_keep,
        seed=seed,
    )


def _retrain_schedule(
    name: str,
    original: LRSchedule,
    iterations: int,
    model: nn.Module,
    before: MaskSet | None,
    after: MaskSet,
) -> LRSchedule:
    if name.lower() == "allr":
        d, s = pruning_norm_change(model, before, after)
        return make_retrain_schedule(
            "allr", original, iterations, norm_change=d, pruned_fraction=max(s, 1e-12)
        )
    return make_retrain_schedule(name, original, iterations)


def _pretrain(
    model: nn.Module, data: DatasetBundle, train: TrainSpec, original: LRSchedule, pretrained: bool
) -> int:
    if pretrained:
        return 0
    _train(model, data, train, original, original.total, None, seed_offset=0)
    return original.total


# ---------------------------------------------------------------------- recipes
def run_dense(model: nn.Module, data: DatasetBundle, train: TrainSpec) -> dict[str, float]:
    """Train ``model`` densely with ``train``; return its validation / test metrics."""
    original = original_schedule(train, data)
    _train(model, data, train, original, original.total, None, seed_offset=0)
    return _metrics(model, data)


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
    if init_state is not None:
        model.load_state_dict(init_state)
    masks.apply(model)
    if schedule is not None:
        total = schedule.total
    else:
        original = original_schedule(train, data)
        total = original.total if iterations is None else iterations
        schedule = (
            original
            if total == original.total
            else make_lr_schedule(train.lr_schedule, train.lr, total)
        )
    _train(model, data, train, schedule, total, masks, seed_offset=0)
    return _metrics(model, data)


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
    original = original_schedule(train, data)
    example = data.train.x[:1]
    dense_flops = count_flops(model, example)
    sparse_flops = count_flops(model, example, masks)
    total = scratch_iterations(original.total, dense_flops, sparse_flops, mode)
    metrics = run_sparse_training(model, data, train, masks, iterations=total)
    return {**metrics, "iterations": float(total)}
