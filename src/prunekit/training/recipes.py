"""Whole prune-retrain experiments: dense training, pruning phases, retraining, metrics per phase.

Every recipe takes a model (changed in place: it ends pruned and retrained), a
:class:`~prunekit.data.DatasetBundle`, a :class:`TrainSpec` (the original training run) and a
:class:`PruneSpec`, and returns an :class:`ExperimentResult` of plain data (``to_dict()`` gives JSON).

* :func:`run_one_shot`: train, prune once, retrain with a named retraining schedule.
* :func:`run_imp`: J phases with weight rewinding (to init or iteration k), LR rewinding, or a
  named retraining schedule.
* :func:`run_gmp`: gradual magnitude pruning during one training run (cubic schedule).
* :func:`run_bimp`: budgeted IMP: linear-decay dense training, then phases with ALLR.
* :func:`run_sparse_training`: train a fixed mask from given weights (controls).
* :func:`run_scratch`: Scratch-E / Scratch-B training of the pruned network from a fresh init.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.pqi import pq_index_report
from prunekit.core.prune import compute_masks
from prunekit.core.schedules import BIMP, GMP, IMP, OneShot
from prunekit.core.targets import Targets
from prunekit.data.base import DatasetBundle
from prunekit.training.controls import count_flops, scratch_iterations
from prunekit.training.lr import (
    LRW,
    LRSchedule,
    make_lr_schedule,
    make_retrain_schedule,
)
from prunekit.training.trainer import Callback, Trainer, evaluate, make_optimizer


@dataclass
class TrainSpec:
    """The original (dense) training run; retraining schedules are derived from it."""

    epochs: float = 20.0
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "step"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    seed: int = 0
    device: str | None = None
    progress: bool = False


@dataclass
class PruneSpec:
    """What to prune and how (see :func:`prunekit.prune`)."""

    sparsity: float = 0.9
    method: str = "magnitude"
    allocation: str = "global"
    targets: Targets | None = None
    min_keep: int | float | None = None


@dataclass
class PhaseResult:
    """One pruning phase: the sparsity reached and metrics before / after retraining."""

    phase: int
    target_sparsity: float
    sparsity: float
    retrain_schedule: str
    retrain_iterations: int
    lr0: float
    pruned: dict[str, float] = field(default_factory=dict)
    retrained: dict[str, float] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    """Plain-data result of a recipe; ``masks`` holds the final mask set (not in ``to_dict``).

    ``details`` holds recipe-specific measurements (JSON-ready), e.g. the PQ Index per phase.
    """

    recipe: str
    dense: dict[str, float]
    phases: list[PhaseResult]
    final: dict[str, float]
    dense_iterations: int
    retrain_iterations: int
    config: dict[str, Any] = field(default_factory=dict)
    masks: MaskSet | None = None
    rewind_state: dict[str, Tensor] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (without the mask set and the rewind state)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("masks", "rewind_state")}
        out["phases"] = [asdict(p) for p in self.phases]
        return out


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


@torch.no_grad()
def pruning_norm_change(
    model: nn.Module, before: MaskSet | None, after: MaskSet
) -> tuple[float, float]:
    """``(d, s)`` for ALLR: relative norm removed by pruning and fraction pruned in this phase.

    ``d = ||theta - prune(theta)||_2 / ||theta||_2`` over the masked tensors, ``s`` = weights
    removed in this phase / weights present before it.
    """
    params = dict(model.named_parameters())
    total_sq, removed_sq = 0.0, 0.0
    kept_before, kept_after = 0, 0
    for name, mask in after.items():
        w = params[name].detach()
        mask = mask.to(w.device)  # masks may sit elsewhere (e.g. on the CPU): once per phase
        if before is not None and name in before:
            w = w * before[name].to(w.device)
            kept_before += int(before[name].sum())
        else:
            kept_before += mask.numel()
        kept_after += int(mask.sum())
        total_sq += float(w.double().pow(2).sum())
        removed_sq += float((w * ~mask).double().pow(2).sum())
    d = math.sqrt(removed_sq / total_sq) if total_sq > 0 else 0.0
    s = (kept_before - kept_after) / kept_before if kept_before else 0.0
    return d, s


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


def _config(**kwargs: Any) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if hasattr(value, "__dataclass_fields__"):
            value = {k: v for k, v in asdict(value).items() if k != "targets"}
        out[key] = value
    return out


def _pretrain(
    model: nn.Module, data: DatasetBundle, train: TrainSpec, original: LRSchedule, pretrained: bool
) -> int:
    if pretrained:
        return 0
    _train(model, data, train, original, original.total, None, seed_offset=0)
    return original.total


def _prune_and_retrain(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    original: LRSchedule,
    phase: int,
    target: float,
    masks: MaskSet | None,
    schedule_name: str,
    iterations: int,
    schedule: LRSchedule | None = None,
    before_retrain: Any = None,
) -> tuple[MaskSet, PhaseResult]:
    new = _prune_step(model, prune, target, masks, seed=train.seed + phase)
    if schedule is None and iterations > 0:
        schedule = _retrain_schedule(schedule_name, original, iterations, model, masks, new)
    if before_retrain is not None:
        before_retrain(new)
    new.apply(model)
    pruned_metrics = _metrics(model, data)
    if iterations > 0 and schedule is not None:
        _train(model, data, train, schedule, iterations, new, seed_offset=1000 * phase)
    lr0 = float(getattr(schedule, "eta0", schedule.lr_at(0))) if schedule is not None else 0.0
    result = PhaseResult(
        phase=phase,
        target_sparsity=target,
        sparsity=new.sparsity,
        retrain_schedule=schedule_name,
        retrain_iterations=iterations,
        lr0=lr0,
        pruned=pruned_metrics,
        retrained=_metrics(model, data),
    )
    return new, result


# ---------------------------------------------------------------------- recipes
def run_dense(model: nn.Module, data: DatasetBundle, train: TrainSpec) -> dict[str, float]:
    """Train ``model`` densely with ``train``; return its validation / test metrics."""
    original = original_schedule(train, data)
    _train(model, data, train, original, original.total, None, seed_offset=0)
    return _metrics(model, data)


def run_one_shot(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    retrain_epochs: float = 1.0,
    retrain_schedule: str = "llr",
    pretrained: bool = False,
) -> ExperimentResult:
    """Train (unless ``pretrained``), prune once to ``prune.sparsity``, retrain."""
    original = original_schedule(train, data)
    dense_its = _pretrain(model, data, train, original, pretrained)
    dense = _metrics(model, data)
    iterations = _epochs_to_iterations(retrain_epochs, train, data)
    target = OneShot(prune.sparsity).sparsity_at(1)
    masks, phase = _prune_and_retrain(
        model, data, train, prune, original, 1, target, None, retrain_schedule, iterations
    )
    return ExperimentResult(
        "one_shot",
        dense,
        [phase],
        phase.retrained,
        dense_its,
        iterations,
        _config(
            train=train,
            prune=prune,
            retrain_epochs=retrain_epochs,
            retrain_schedule=retrain_schedule,
        ),
        masks,
    )


class _Snapshot(Callback):
    """Copies the model's state when the run reaches ``iteration`` (for rewinding to theta_k)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        self.state: dict[str, Tensor] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.iteration == 0 and trainer.iteration == 0:
            self.state = copy.deepcopy(trainer.model.state_dict())

    def on_step_end(self, trainer: Trainer, loss: Tensor) -> None:
        if trainer.iteration == self.iteration:
            self.state = copy.deepcopy(trainer.model.state_dict())


def run_imp(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    phases: int = 3,
    rewind: str = "weights",
    rewind_iteration: int = 0,
    retrain_epochs: float | None = None,
    retrain_schedule: str = "ft",
    pretrained: bool = False,
    rewind_state: dict[str, Tensor] | None = None,
    log_pq_index: bool = False,
) -> ExperimentResult:
    """Iterative magnitude pruning over ``phases`` phases to ``prune.sparsity``.

    Args:
        rewind: ``"weights"``: after each pruning step the survivors are reset to theta_k (k =
            ``rewind_iteration``, 0 = initialisation, as in the lottery ticket experiments) and
            retrained with the original schedule from iteration k; ``"lr"``: weights are kept
            and the last ``retrain_epochs`` of the original LR schedule are replayed (Renda et al.
            2020); ``"none"``: keep weights and retrain with ``retrain_schedule``.
        rewind_iteration: k, in iterations of the dense run.
        retrain_epochs: retraining length per phase for ``"lr"`` / ``"none"`` (default: the
            length of the dense run).
        rewind_state: theta_k when ``pretrained`` (a state_dict to rewind to).
        log_pq_index: record the PQ Index (per layer and global) of the dense model and of the
            retrained model after every phase in ``result.details["pq_index"]``.

    The result's ``config["rewind_state"]`` is not stored; the rewind point is available as
    ``result.config["rewind_iteration"]``.
    """
    if rewind not in ("weights", "lr", "none"):
        raise ValueError(f"rewind: expected 'weights', 'lr' or 'none', got {rewind!r}")
    schedule = IMP(prune.sparsity, phases)
    original = original_schedule(train, data)
    if not 0 <= rewind_iteration < original.total:
        raise ValueError(
            f"rewind_iteration: expected an iteration in [0, {original.total}), got {rewind_iteration}"
        )
    if rewind == "weights":
        if pretrained and rewind_state is None:
            raise ValueError("rewind_state: weight rewinding of a pretrained model needs theta_k")
        snap = _Snapshot(rewind_iteration)
        if not pretrained:
            _train(model, data, train, original, original.total, None, 0, callbacks=[snap])
            rewind_state = snap.state
        dense_its = 0 if pretrained else original.total
    else:
        dense_its = _pretrain(model, data, train, original, pretrained)
    dense = _metrics(model, data)
    pq_log = [_pq_entry(model, None, prune.targets, 0, dense)] if log_pq_index else []

    masks: MaskSet | None = None
    results: list[PhaseResult] = []
    total_retrain = 0
    for j, target in zip(schedule.pruning_steps(), schedule.targets()):
        if rewind == "weights":
            its = original.total - rewind_iteration
            sched: LRSchedule | None = LRW(original, its)
            name = "rewind_weights"
            state = rewind_state

            def restore(_: MaskSet, state: dict[str, Tensor] | None = state) -> None:
                model.load_state_dict(state)
        elif rewind == "lr":
            its = (
                original.total
                if retrain_epochs is None
                else _epochs_to_iterations(retrain_epochs, train, data)
            )
            sched, name, restore = LRW(original, max(its, 1)), "lrw", None
        else:
            its = (
                original.total
                if retrain_epochs is None
                else _epochs_to_iterations(retrain_epochs, train, data)
            )
            sched, name, restore = None, retrain_schedule, None
        masks, phase = _prune_and_retrain(
            model,
            data,
            train,
            prune,
            original,
            j,
            target,
            masks,
            name,
            its,
            schedule=sched,
            before_retrain=restore,
        )
        results.append(phase)
        total_retrain += its
        if log_pq_index:
            pq_log.append(_pq_entry(model, masks, prune.targets, j, phase.retrained))
    return ExperimentResult(
        "imp",
        dense,
        results,
        results[-1].retrained,
        dense_its,
        total_retrain,
        _config(
            train=train,
            prune=prune,
            phases=phases,
            rewind=rewind,
            rewind_iteration=rewind_iteration,
            retrain_epochs=retrain_epochs,
            retrain_schedule=retrain_schedule,
        ),
        masks,
        rewind_state if rewind == "weights" else None,
        {"pq_index": pq_log} if log_pq_index else {},
    )


def _pq_entry(
    model: nn.Module,
    masks: MaskSet | None,
    targets: Targets | None,
    phase: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """PQ Index of ``model`` (d = kept weights, or non-zero ones without masks) beside metrics."""
    report = pq_index_report(model, masks, targets=targets)
    return {
        "phase": phase,
        "sparsity": masks.sparsity if masks is not None else 0.0,
        "global": report.global_index,
        "layers": dict(report.layers),
        **{k: v for k, v in metrics.items() if k.endswith("top1") or k.endswith("loss")},
    }


def run_bimp(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    phases: int = 3,
    retrain_epochs: float = 3.0,
    pretrained: bool = False,
) -> ExperimentResult:
    """Budgeted IMP: linear-decay dense training, then ``phases`` phases sharing ``retrain_epochs``.

    The budget is split evenly over the phases (remainder to the last) and each phase is
    retrained with ALLR. ``train.lr_schedule`` is replaced by ``"linear"`` for the dense run.
    """
    spec = dataclasses.replace(train, lr_schedule="linear")
    original = original_schedule(spec, data)
    dense_its = _pretrain(model, data, spec, original, pretrained)
    dense = _metrics(model, data)
    schedule = BIMP(prune.sparsity, phases, _epochs_to_iterations(retrain_epochs, spec, data))
    masks: MaskSet | None = None
    results = []
    for j, target, its in zip(schedule.pruning_steps(), schedule.targets(), schedule.budgets()):
        masks, phase = _prune_and_retrain(
            model, data, spec, prune, original, j, target, masks, "allr", its
        )
        results.append(phase)
    return ExperimentResult(
        "bimp",
        dense,
        results,
        results[-1].retrained,
        dense_its,
        schedule.retrain_iterations,
        _config(train=spec, prune=prune, phases=phases, retrain_epochs=retrain_epochs),
        masks,
    )


class GMPCallback(Callback):
    """Prunes to ``schedule.sparsity_at(t)`` at each of the schedule's pruning steps during training."""

    def __init__(self, schedule: GMP, prune: PruneSpec, seed: int = 0) -> None:
        self.schedule = schedule
        self.prune = prune
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
        new = _prune_step(trainer.model, self.prune, target, trainer.masks, seed=self.seed + t)
        trainer.set_masks(new)  # attaching applies the new masks at once
        self.trajectory.append((t, new.sparsity))

    def on_fit_start(self, trainer: Trainer) -> None:
        self._maybe_prune(trainer)

    def on_step_end(self, trainer: Trainer, loss: Tensor) -> None:
        self._maybe_prune(trainer)


def run_gmp(
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
    original = original_schedule(train, data)
    schedule = GMP.for_training(
        prune.sparsity, original.total, start_fraction, end_fraction, frequency
    )
    callback = GMPCallback(schedule, prune, seed=train.seed)
    optimizer = make_optimizer(
        model, train.optimizer, train.lr, train.momentum, train.weight_decay, train.nesterov
    )
    trainer = Trainer(
        model,
        data.train,
        optimizer=optimizer,
        lr_schedule=original,
        batch_size=train.batch_size,
        task=data.task,
        augment=data.augment,
        device=train.device,
        seed=train.seed,
        callbacks=[callback],
        progress=train.progress,
    )
    trainer.fit(resume=False)
    final = _metrics(model, data)
    masks = trainer.masks if trainer.masks is not None else MaskSet()
    phase = PhaseResult(
        phase=1,
        target_sparsity=prune.sparsity,
        sparsity=masks.sparsity,
        retrain_schedule="during_training",
        retrain_iterations=0,
        lr0=original.lr_at(0),
        pruned=final,
        retrained=final,
    )
    return ExperimentResult(
        "gmp",
        {},
        [phase],
        final,
        original.total,
        0,
        _config(
            train=train, prune=prune, schedule=schedule.describe(), trajectory=callback.trajectory
        ),
        masks,
    )


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
