"""Sparse Model Soups as a Trainer-backed recipe (Zimmer, Spiegel and Pokutta, ICLR 2024).

:func:`run_soups`: dense training (or a given dense model), then per phase: prune the current
model (IMP sparsity schedule, magnitude by default), retrain ``m`` copies with the mask fixed
through the :class:`~prunekit.training.Trainer` (each varying one of seed, weight decay,
retraining length or retraining LR schedule), merge them into a uniform or greedy soup with
recalibrated BatchNorm statistics, and let the next phase prune the soup. Each phase records
every ingredient's accuracy, both soups' and the prediction ensemble's.

With ``out_dir`` every step is resumable: the dense run and every ingredient keep Trainer
checkpoints, finished ingredients are files that a rerun loads instead of retraining
(:func:`prunekit.training.soups.run_soup_phase`), and the pruning of a phase is a deterministic function
of the soup before it, so rerunning the same call continues where it stopped.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.device import resolve_device
from prunekit.core.masks import MaskSet
from prunekit.core.schedules import IMP
from prunekit.core.serialization import make_dirs, write_json
from prunekit.data.base import DatasetBundle, TensorData
from prunekit.training.distributed import dist_info, is_distributed
from prunekit.training.lr import (
    LRSchedule,
    list_retrain_schedules,
    make_lr_schedule,
    make_retrain_schedule,
)
from prunekit.training.recipes import (
    ExperimentResult,
    PhaseResult,
    PruneSpec,
    TrainSpec,
    _config,
    _epochs_to_iterations,
    _metrics,
    _prune_step,
    original_schedule,
    pruning_norm_change,
)
from prunekit.training.soups import (
    _variant_digest,
    ingredient_variants,
    prediction_ensemble,
    run_soup_phase,
)
from prunekit.training.trainer import Callback, Trainer, evaluate, make_optimizer

VARY = ("seed", "weight_decay", "length", "lr_schedule")
MERGES = ("uniform", "greedy", "best")


@dataclass
class SoupPhase(PhaseResult):
    """One soup phase. ``retrained`` holds the metrics of the soup carried into the next phase.

    Each accuracy entry is a dict with ``val_top1`` and ``test_top1``; ``ingredients`` also holds
    each ingredient's varied ``value`` and ``iterations``.
    """

    vary: str = "seed"
    merge: str = "uniform"
    ingredients: list[dict[str, Any]] = field(default_factory=list)
    uniform: dict[str, float] = field(default_factory=dict)
    greedy: dict[str, Any] = field(default_factory=dict)
    ensemble: dict[str, float] = field(default_factory=dict)
    soup_sparsity: dict[str, float] = field(default_factory=dict)
    resumed: list[int] = field(default_factory=list)


@dataclass
class TrainerRetrain:
    """The ``retrain_fn`` of :func:`~prunekit.training.soups.run_soup_phase` backed by the Trainer.

    Picklable (a module-level class holding tensors and plain data), so it runs in spawned
    worker processes too. A variant is a dict with ``seed``, ``weight_decay``, ``iterations``,
    ``lr_schedule`` and ``ingredient`` (plus ``norm_change`` / ``pruned_fraction`` for ALLR).

    Args:
        train_data: the training split.
        train: the original run's settings (optimizer, LR peak, momentum, batch size, device).
        original: the original LR schedule the retraining schedules are derived from.
        task / augment: as in :class:`~prunekit.training.Trainer`.
        checkpoint_root: where each ingredient keeps its Trainer checkpoint (one folder per
            ingredient and variant), so an interrupted ingredient resumes where it stopped.
        checkpoint_every: checkpoint interval in iterations (default: once per epoch).
        callbacks: extra Trainer callbacks (must be picklable for ``workers > 1``).
    """

    train_data: TensorData
    train: TrainSpec
    original: LRSchedule
    task: str = "classification"
    augment: Any = None
    checkpoint_root: str | None = None
    checkpoint_every: int | None = None
    callbacks: tuple[Callback, ...] = ()

    def checkpoint_dir(self, variant: dict[str, Any]) -> Path | None:
        """The folder of this variant's Trainer checkpoint (None without ``checkpoint_root``)."""
        if self.checkpoint_root is None:
            return None
        name = f"ingredient_{int(variant['ingredient']):03d}_{_variant_digest(variant)}"
        return Path(self.checkpoint_root) / name

    def __call__(
        self, model: nn.Module, masks: MaskSet, variant: dict[str, Any]
    ) -> dict[str, Tensor]:
        iterations = int(variant["iterations"])
        if iterations < 1:
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        schedule = make_retrain_schedule(
            variant["lr_schedule"],
            self.original,
            iterations,
            norm_change=variant.get("norm_change"),
            pruned_fraction=variant.get("pruned_fraction"),
        )
        spec = self.train
        optimizer = make_optimizer(
            model,
            spec.optimizer,
            spec.lr,
            spec.momentum,
            float(variant["weight_decay"]),
            spec.nesterov,
        )
        per_epoch = max(1, math.ceil(len(self.train_data) / spec.batch_size))
        Trainer(
            model,
            self.train_data,
            optimizer=optimizer,
            lr_schedule=schedule,
            iterations=iterations,
            batch_size=spec.batch_size,
            masks=masks,
            task=self.task,
            augment=self.augment,
            device=spec.device,
            seed=int(variant["seed"]),
            callbacks=list(self.callbacks),
            progress=spec.progress,
            checkpoint_dir=self.checkpoint_dir(variant),
            checkpoint_every=self.checkpoint_every or per_epoch,
            # one ingredient is one process's run; ranks of a job share out the ingredients
            distributed=False,
        ).fit(resume=True)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _batches(
    data: TensorData, batch_size: int, limit: int | None = None
) -> list[tuple[Tensor, Tensor]]:
    n = len(data) if limit is None else min(limit, len(data))
    return [data[i : min(i + batch_size, n)] for i in range(0, n, batch_size)]


def _bn_batches(data: TensorData, batch_size: int, fraction: float, seed: int) -> list[Any]:
    """A fixed random ``fraction`` of the training set (un-augmented) for BatchNorm statistics."""
    count = max(1, math.ceil(fraction * len(data)))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed), device="cpu")[
        :count
    ]
    subset = data.subset(order)
    return [(x,) for x, _ in _batches(subset, batch_size)]


def _top1(model: nn.Module, data: TensorData, task: str) -> float:
    return evaluate(model, data, task=task)["top1"]


def _lr0(variant: dict[str, Any], original: LRSchedule) -> float:
    """Peak LR of a variant's retraining schedule (0 when it does not retrain)."""
    iterations = int(variant["iterations"])
    if iterations < 1:
        return 0.0
    schedule = make_retrain_schedule(
        variant["lr_schedule"],
        original,
        iterations,
        norm_change=variant.get("norm_change"),
        pruned_fraction=variant.get("pruned_fraction"),
    )
    return float(getattr(schedule, "eta0", schedule.eta_max))


def _check_options(
    phases: int,
    m: int,
    vary: str,
    merge: str,
    retrain_schedule: str,
    values: Any,
    bn_fraction: float,
) -> None:
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases: expected a positive int, got {phases!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m: expected a positive int (ingredients per phase), got {m!r}")
    if vary not in VARY:
        raise ValueError(f"vary: expected one of {', '.join(VARY)}, got {vary!r}")
    if merge not in MERGES:
        raise ValueError(f"merge: expected one of {', '.join(MERGES)}, got {merge!r}")
    names = list_retrain_schedules()
    schedules = [retrain_schedule]
    if vary == "lr_schedule" and values is not None:
        schedules += list(values)
    for name in schedules:
        if not isinstance(name, str) or name.lower() not in names:
            raise ValueError(
                f"retrain_schedule: unknown retraining schedule {name!r}; valid: {', '.join(names)}"
            )
    if not isinstance(bn_fraction, (int, float)) or not 0.0 < bn_fraction <= 1.0:
        raise ValueError(f"bn_fraction: expected a number in (0, 1], got {bn_fraction!r}")


def run_soups(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    phases: int = 1,
    m: int = 3,
    vary: str = "seed",
    values: Sequence[Any] | None = None,
    retrain_epochs: float = 1.0,
    retrain_schedule: str = "llr",
    retrain_lr: float | None = None,
    sparsities: Sequence[float] | None = None,
    merge: str = "uniform",
    workers: int = 1,
    out_dir: str | Path | None = None,
    pretrained: bool = False,
    bn_fraction: float = 0.2,
    checkpoint_every: int | None = None,
    keep_checkpoints: bool = False,
    callbacks: Sequence[Callback] = (),
) -> ExperimentResult:
    """Sparse Model Soups over ``phases`` prune-retrain phases to ``prune.sparsity``.

    Args:
        model: trained in place (unless ``pretrained``); ends holding the last phase's soup.
        data: the dataset bundle; its ``val`` split (non-empty) ranks the greedy soup.
        train: the dense run; retraining uses its optimizer, LR peak, momentum and batch size.
        prune: sparsity target, criterion, allocation and targets. Phase j reaches
            ``1 - (1 - S)^(j / phases)``; each phase prunes the previous phase's soup.
        m: ingredients per phase.
        vary: what differs between the ingredients: ``"seed"`` (batch order and augmentation:
            seeds ``train.seed + 1000 * phase + i``), ``"weight_decay"`` (``train.weight_decay``
            x 2^t, t evenly in [-1, 1]), ``"length"`` (retraining iterations x factors evenly in
            [0.75, 1.25]) or ``"lr_schedule"`` (cycling ``llr, clr, slr, ft``).
        values: the m values of the varied setting instead of the defaults (for ``"length"``:
            iterations; for ``"lr_schedule"``: names from
            :func:`~prunekit.training.list_retrain_schedules`).
        retrain_epochs / retrain_schedule: every ingredient's retraining length and schedule
            (``ft``, ``lrw``, ``slr``, ``clr``, ``llr``, ``allr``) unless varied.
        retrain_lr: the peak LR the retraining schedules are derived from (default
            ``train.lr``: the original schedule's).
        sparsities: explicit increasing per-phase targets (e.g. ``[0.9, 0.95]``) instead of
            the IMP schedule; ``phases`` is then their number.
        merge: the soup carried into the next phase: ``"uniform"``, ``"greedy"`` or ``"best"``
            (the better of the two on validation). Both soups are always built and reported.
        workers: ingredients retrained in parallel (spawned processes).
        out_dir: makes the run resumable and keeps its artefacts: ``dense/`` (checkpoint),
            ``phase_<j>/`` (masks, ingredients, both soups, ``soup_phase.json``) and
            ``result.json``. Rerunning the same call continues where it stopped.
        pretrained: skip dense training (``model`` is already trained).
        bn_fraction: share of the training set used to recalibrate BatchNorm in every soup.
        checkpoint_every: Trainer checkpoint interval in iterations (default: every epoch).
        keep_checkpoints: keep the ingredients' Trainer checkpoints after their phase (by
            default they are deleted once the phase's ingredient files are written).
        callbacks: extra Trainer callbacks for every retraining run.

    Returns:
        An :class:`~prunekit.training.ExperimentResult` (``recipe="soups"``) whose phases are
        :class:`SoupPhase` records; ``to_dict()`` is plain JSON-ready data and ``masks`` the
        final mask set.
    """
    if sparsities is not None:
        targets = [float(t) for t in sparsities]
        if not targets or any(not 0.0 < t < 1.0 for t in targets) or targets != sorted(targets):
            raise ValueError(
                f"sparsities: expected increasing targets in (0, 1), got {list(sparsities)!r}"
            )
        phases = len(targets)
    _check_options(phases, m, vary, merge, retrain_schedule, values, bn_fraction)
    if sparsities is None:
        targets = IMP(prune.sparsity, phases).targets()
    if retrain_lr is not None and (
        isinstance(retrain_lr, bool) or not isinstance(retrain_lr, (int, float)) or retrain_lr <= 0
    ):
        raise ValueError(f"retrain_lr: expected a positive number, got {retrain_lr!r}")
    if not isinstance(data, DatasetBundle):
        raise TypeError(f"data: expected a DatasetBundle, got {type(data).__name__}")
    if len(data.val) == 0:
        raise ValueError("data: soups need a non-empty validation split (val_fraction > 0)")
    root = Path(out_dir) if out_dir is not None else None
    rank, world = dist_info() if is_distributed() else (0, 1)
    if world > 1 and root is None:
        raise ValueError("out_dir: a multi-process job shares its ingredients through out_dir")
    original = original_schedule(train, data)
    dense_its = 0
    if not pretrained:
        per_epoch = max(1, math.ceil(len(data.train) / train.batch_size))
        Trainer(
            model,
            data.train,
            optimizer=make_optimizer(
                model,
                train.optimizer,
                train.lr,
                train.momentum,
                train.weight_decay,
                train.nesterov,
            ),
            lr_schedule=original,
            batch_size=train.batch_size,
            task=data.task,
            augment=data.augment,
            device=train.device,
            seed=train.seed,
            progress=train.progress,
            checkpoint_dir=root / "dense" if root is not None else None,
            checkpoint_every=checkpoint_every or per_epoch,
        ).fit(resume=True)
        dense_its = original.total
    # the Trainer's default device; everything (evaluation, soups, ensemble) runs there
    device = resolve_device(train.device, "train.device")
    model.to(device)
    dense = _metrics(model, data)
    val_batches = _batches(data.val, 512)
    test_batches = _batches(data.test, 512)
    bn_data = _bn_batches(data.train, train.batch_size, bn_fraction, train.seed)
    base_its = _epochs_to_iterations(retrain_epochs, train, data)
    retrain_original = (
        original
        if retrain_lr is None
        else make_lr_schedule(train.lr_schedule, float(retrain_lr), original.total)
    )

    masks: MaskSet | None = None
    records: list[SoupPhase] = []
    total_retrain = 0
    for j, target in enumerate(targets, start=1):
        new = _prune_step(model, prune, target, masks, seed=train.seed + j)
        norm_change, pruned_fraction = pruning_norm_change(model, masks, new)
        new.apply(model)
        pruned_metrics = _metrics(model, data)
        base = {
            "phase": j,
            "seed": train.seed + 1000 * j,
            "weight_decay": train.weight_decay,
            "iterations": base_its,
            "lr_schedule": retrain_schedule,
            "norm_change": norm_change,
            "pruned_fraction": max(pruned_fraction, 1e-12),
        }
        key = "iterations" if vary == "length" else None
        variants = ingredient_variants(base, vary, m, values=values, key=key)
        phase_dir = root / f"phase_{j}" if root is not None else None
        ckpt_root = phase_dir / "checkpoints" if phase_dir is not None else None
        retrain_fn = TrainerRetrain(
            data.train,
            train,
            retrain_original,
            task=data.task,
            augment=data.augment,
            checkpoint_root=str(ckpt_root) if ckpt_root is not None else None,
            checkpoint_every=checkpoint_every,
            callbacks=tuple(callbacks),
        )
        if phase_dir is not None:
            make_dirs(phase_dir)
            if rank == 0:
                new.save(phase_dir / "masks.safetensors")
        phase = run_soup_phase(
            model,
            new,
            retrain_fn,
            variants,
            val_batches,
            workers=workers,
            out_dir=phase_dir,
            bn_data=bn_data,
            select=merge,
            device=device,
        )
        if ckpt_root is not None and not keep_checkpoints and rank == 0:
            shutil.rmtree(ckpt_root, ignore_errors=True)
        masks = new
        records.append(
            _record(
                j,
                target,
                new,
                model,
                data,
                phase,
                variants,
                vary,
                merge,
                test_batches,
                device,
                retrain_original,
            )
        )
        records[-1].pruned = pruned_metrics
        total_retrain += sum(int(v["iterations"]) for v in variants)

    result = ExperimentResult(
        "soups",
        dense,
        records,  # type: ignore[arg-type]
        records[-1].retrained,
        dense_its,
        total_retrain,
        _config(
            train=train,
            prune=prune,
            phases=phases,
            m=m,
            vary=vary,
            values=list(values) if values is not None else None,
            retrain_epochs=retrain_epochs,
            retrain_schedule=retrain_schedule,
            retrain_lr=retrain_lr,
            sparsities=targets,
            merge=merge,
            workers=workers,
            pretrained=pretrained,
            bn_fraction=bn_fraction,
        ),
        masks,
    )
    if root is not None and rank == 0:
        write_json(result.to_dict(), root / "result.json")
    return result


def _record(
    j: int,
    target: float,
    masks: MaskSet,
    model: nn.Module,
    data: DatasetBundle,
    phase: Any,
    variants: list[dict[str, Any]],
    vary: str,
    merge: str,
    test_batches: list[tuple[Tensor, Tensor]],
    device: Any,
    original: LRSchedule,
) -> SoupPhase:
    """Per-phase accuracies on validation (from the phase) and test (computed here)."""
    key = {"seed": "seed", "weight_decay": "weight_decay", "length": "iterations"}.get(
        vary, "lr_schedule"
    )
    work = copy.deepcopy(model)
    members = []
    ingredients = []
    for i, sd in enumerate(phase.ingredient_state_dicts):
        work.load_state_dict(sd)
        ingredients.append(
            {
                "value": variants[i][key],
                "iterations": int(variants[i]["iterations"]),
                "val_top1": phase.ingredient_accuracy[i],
                "test_top1": _top1(work, data.test, data.task),
            }
        )
        member = copy.deepcopy(model)
        member.load_state_dict(sd)
        members.append(member.to(device))
    work.load_state_dict(phase.uniform_state_dict)
    uniform = {"val_top1": phase.uniform_accuracy, "test_top1": _top1(work, data.test, data.task)}
    work.load_state_dict(phase.greedy_state_dict)
    greedy = {
        "val_top1": phase.greedy_accuracy,
        "test_top1": _top1(work, data.test, data.task),
        "ingredients": list(phase.greedy_ingredients),
    }
    ensemble = {
        "val_top1": phase.ensemble_accuracy,
        "test_top1": prediction_ensemble(members, test_batches, device),
    }
    return SoupPhase(
        phase=j,
        target_sparsity=target,
        sparsity=masks.sparsity,
        retrain_schedule=str(variants[0]["lr_schedule"]) if vary != "lr_schedule" else "varied",
        retrain_iterations=int(sum(int(v["iterations"]) for v in variants)),
        lr0=_lr0(variants[0], original),
        pruned={},
        retrained=_metrics(model, data),
        vary=vary,
        merge=str(phase.selected),
        ingredients=ingredients,
        uniform=uniform,
        greedy=greedy,
        ensemble=ensemble,
        soup_sparsity=dict(phase.soup_sparsity),
        resumed=list(phase.resumed),
    )
