"""Sparse Model Soups (Zimmer, Spiegel and Pokutta, ICLR 2024) as a recipe.

The dense stage, then one stage (``recipe``) that runs every phase: prune the current model
(IMP sparsity schedule, magnitude by default), retrain ``m`` copies with the mask fixed (each
varying one of seed, weight decay, retraining length or retraining LR schedule), merge them
into a uniform or greedy soup with recalibrated BatchNorm statistics, and let the next phase
prune the soup. Each phase records every ingredient's accuracy, both soups' and the prediction
ensemble's.

The stage is resumable inside: finished ingredients are files that a rerun loads instead of
retraining (:func:`prunekit.training.soups.run_soup_phase`), an interrupted ingredient resumes
from its Trainer checkpoint, and the pruning of a phase is a deterministic function of the soup
before it. :func:`run_soups` (the Python API) and ``prunekit run`` run the same stages.
"""

from __future__ import annotations

import copy
import dataclasses
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
from prunekit.recipes.context import RunContext, make_trainer
from prunekit.recipes.dense import dense_stage
from prunekit.recipes.executor import Stage
from prunekit.recipes.methods.prune_retrain import pruning_norm_change
from prunekit.recipes.registry import Recipe, register_recipe, run_recipe
from prunekit.recipes.spec import ExperimentResult, PhaseResult, PruneSpec, TrainSpec, spec_dict
from prunekit.training.distributed import dist_info, is_distributed
from prunekit.training.lr import (
    LRSchedule,
    list_retrain_schedules,
    make_lr_schedule,
    make_retrain_schedule,
)
from prunekit.training.soups import (
    _variant_digest,
    ingredient_variants,
    prediction_ensemble,
    run_soup_phase,
)
from prunekit.training.trainer import Callback, evaluate

__all__ = ["SoupPhase", "SoupsOptions", "TrainerRetrain", "run_soups", "soups", "soups_stage"]

VARY = ("seed", "weight_decay", "length", "lr_schedule")
MERGES = ("uniform", "greedy", "best")


@dataclass
class SoupsOptions:
    """The recipe's own options (see :func:`run_soups` for each one's meaning).

    ``callbacks`` (extra Trainer callbacks of every ingredient) is for the Python API; a config
    sets the other fields (``phases`` from ``prune.phases``, the rest from ``prune.options``).
    """

    phases: int = 1
    m: int = 3
    vary: str = "seed"
    values: list[Any] | None = None
    retrain_lr: float | None = None
    sparsities: list[float] | None = None
    merge: str = "uniform"
    workers: int = 1
    bn_fraction: float = 0.2
    keep_checkpoints: bool = False
    callbacks: tuple[Callback, ...] = ()


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


def _retrain_schedule(variant: dict[str, Any], original: LRSchedule) -> LRSchedule:
    return make_retrain_schedule(
        variant["lr_schedule"],
        original,
        int(variant["iterations"]),
        norm_change=variant.get("norm_change"),
        pruned_fraction=variant.get("pruned_fraction"),
    )


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
        if iterations >= 1:
            per_epoch = max(1, math.ceil(len(self.train_data) / self.train.batch_size))
            spec = dataclasses.replace(
                self.train,
                weight_decay=float(variant["weight_decay"]),
                checkpoint_every=self.checkpoint_every or per_epoch,
            )
            make_trainer(
                model,
                self.train_data,
                spec,
                _retrain_schedule(variant, self.original),
                iterations,
                masks,
                int(variant["seed"]),
                self.checkpoint_dir(variant),
                task=self.task,
                augment=self.augment,
                callbacks=self.callbacks,
                # one ingredient is one process's run; ranks of a job share out the ingredients
                distributed=False,
            ).fit(resume=True)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- options
def _phase_targets(ctx: RunContext) -> list[float]:
    """The per-phase sparsity targets; every option error surfaces here, before any training."""
    o: SoupsOptions = ctx.options
    if o.sparsities is not None:
        targets = [float(t) for t in o.sparsities]
        if not targets or any(not 0.0 < t < 1.0 for t in targets) or targets != sorted(targets):
            raise ValueError(
                f"sparsities: expected increasing targets in (0, 1), got {list(o.sparsities)!r}"
            )
        phases = len(targets)
    else:
        phases = o.phases
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases: expected a positive int, got {phases!r}")
    if isinstance(o.m, bool) or not isinstance(o.m, int) or o.m < 1:
        raise ValueError(f"m: expected a positive int (ingredients per phase), got {o.m!r}")
    if o.vary not in VARY:
        raise ValueError(f"vary: expected one of {', '.join(VARY)}, got {o.vary!r}")
    if o.merge not in MERGES:
        raise ValueError(f"merge: expected one of {', '.join(MERGES)}, got {o.merge!r}")
    names = list_retrain_schedules()
    schedules = [ctx.retrain_schedule]
    if o.vary == "lr_schedule" and o.values is not None:
        schedules += list(o.values)
    for name in schedules:
        if not isinstance(name, str) or name.lower() not in names:
            raise ValueError(
                f"retrain_schedule: unknown retraining schedule {name!r}; valid: {', '.join(names)}"
            )
    bn = o.bn_fraction
    if isinstance(bn, bool) or not isinstance(bn, (int, float)) or not 0.0 < bn <= 1.0:
        raise ValueError(f"bn_fraction: expected a number in (0, 1], got {bn!r}")
    lr = o.retrain_lr
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise ValueError(f"retrain_lr: expected a positive number, got {lr!r}")
    if not isinstance(ctx.data, DatasetBundle):
        raise TypeError(f"data: expected a DatasetBundle, got {type(ctx.data).__name__}")
    if len(ctx.data.val) == 0:
        raise ValueError("data: soups need a non-empty validation split (val_fraction > 0)")
    if o.sparsities is not None:
        return targets
    return IMP(ctx.prune.sparsity, phases).targets()


# ---------------------------------------------------------------------- the soup stage
def _batches(data: TensorData, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    n = len(data)
    return [data[i : min(i + batch_size, n)] for i in range(0, n, batch_size)]


def _bn_batches(data: TensorData, batch_size: int, fraction: float, seed: int) -> list[Any]:
    """A fixed random ``fraction`` of the training set (un-augmented) for BatchNorm statistics."""
    count = max(1, math.ceil(fraction * len(data)))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator, device="cpu")[:count]
    return [(x,) for x, _ in _batches(data.subset(order), batch_size)]


def _top1(model: nn.Module, data: TensorData, task: str) -> float:
    return evaluate(model, data, task=task)["top1"]


def _lr0(variant: dict[str, Any], original: LRSchedule) -> float:
    """Peak LR of a variant's retraining schedule (0 when it does not retrain)."""
    if int(variant["iterations"]) < 1:
        return 0.0
    schedule = _retrain_schedule(variant, original)
    return float(getattr(schedule, "eta0", schedule.eta_max))


def _run_soups(ctx: RunContext, root: Path | None) -> dict[str, Any]:
    """Every soup phase on the dense model in ``ctx``; ``root`` keeps ``phase_<j>/`` folders
    (masks, ingredients, soups, Trainer checkpoints) so that a rerun continues."""
    o: SoupsOptions = ctx.options
    targets = _phase_targets(ctx)
    data, train = ctx.data, ctx.train
    rank, world = dist_info() if is_distributed() else (0, 1)
    if world > 1 and root is None:
        raise ValueError("out_dir: a multi-process job shares its ingredients through out_dir")
    # the Trainer's default device; everything (evaluation, soups, ensemble) runs there
    device = resolve_device(train.device, "train.device")
    model = ctx.model.to(device)
    val_batches = _batches(data.val, 512)
    test_batches = _batches(data.test, 512)
    bn_data = _bn_batches(data.train, train.batch_size, o.bn_fraction, train.seed)
    base_its = ctx.retrain_iterations()
    original = ctx.original
    if o.retrain_lr is not None:
        original = make_lr_schedule(train.lr_schedule, float(o.retrain_lr), original.total)
    ctx.log(
        f"soups: {len(targets)} phase(s) of {o.m} ingredients" + (f" in {root}" if root else "")
    )

    masks: MaskSet | None = None
    records: list[dict[str, Any]] = []
    for j, target in enumerate(targets, start=1):
        new = ctx.compute_masks(model, target, masks, train.seed + j)
        norm_change, pruned_fraction = pruning_norm_change(model, masks, new)
        new.apply(model)
        pruned = ctx.metrics()
        base = {
            "phase": j,
            "seed": train.seed + 1000 * j,
            "weight_decay": train.weight_decay,
            "iterations": base_its,
            "lr_schedule": ctx.retrain_schedule,
            "norm_change": norm_change,
            "pruned_fraction": max(pruned_fraction, 1e-12),
        }
        key = "iterations" if o.vary == "length" else None
        variants = ingredient_variants(base, o.vary, o.m, values=o.values, key=key)
        phase_dir = root / f"phase_{j}" if root is not None else None
        ckpt_root = phase_dir / "checkpoints" if phase_dir is not None else None
        retrain_fn = TrainerRetrain(
            data.train,
            train,
            original,
            task=data.task,
            augment=data.augment,
            checkpoint_root=str(ckpt_root) if ckpt_root is not None else None,
            checkpoint_every=train.checkpoint_every,
            callbacks=tuple(o.callbacks),
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
            workers=o.workers,
            out_dir=phase_dir,
            bn_data=bn_data,
            select=o.merge,
            device=device,
        )
        if ckpt_root is not None and not o.keep_checkpoints and rank == 0:
            shutil.rmtree(ckpt_root, ignore_errors=True)
        masks = new
        record = _record(ctx, j, target, new, phase, variants, test_batches, device, original)
        record.pruned = pruned
        records.append(dataclasses.asdict(record))
        ctx.log(f"soups: phase {j} at sparsity {new.sparsity:.4f}, soup ({phase.selected})")
    ctx.masks = masks
    return {"phases": records}


def _record(
    ctx: RunContext,
    j: int,
    target: float,
    masks: MaskSet,
    phase: Any,
    variants: list[dict[str, Any]],
    test_batches: list[tuple[Tensor, Tensor]],
    device: Any,
    original: LRSchedule,
) -> SoupPhase:
    """Per-phase accuracies on validation (from the phase) and test (computed here)."""
    vary, model, data = ctx.options.vary, ctx.model, ctx.data
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
        retrained=ctx.metrics(),
        vary=vary,
        merge=str(phase.selected),
        ingredients=ingredients,
        uniform=uniform,
        greedy=greedy,
        ensemble=ensemble,
        soup_sparsity=dict(phase.soup_sparsity),
        resumed=list(phase.resumed),
    )


def _apply(ctx: RunContext, record: dict[str, Any]) -> None:
    ctx.phases.extend(record["phases"])


def soups_stage() -> Stage:
    """The soup phases as one stage (``<run>/recipe``); it resumes inside from its folder."""
    # the phases remove their own checkpoints (unless keep_checkpoints)
    return Stage("recipe", _run_soups, _apply, cleanup=())


def _stages(ctx: RunContext) -> list[Stage]:
    _phase_targets(ctx)  # option errors surface before any training
    return [dense_stage(), soups_stage()]


# ---------------------------------------------------------------------- registration
_CONFIG_ONLY = ("phases", "callbacks")  # phases come from prune.phases; callbacks are objects


def _option_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SoupsOptions) if f.name not in _CONFIG_ONLY]


def _configure(cfg: Any) -> SoupsOptions:
    return SoupsOptions(phases=cfg.prune.phases, **dict(cfg.prune.options))


def _validate(section: Any, path: str) -> None:
    """Soups prunes copies of one model with a data-free criterion without options."""
    from prunekit.criteria import create_criterion
    from prunekit.experiments.typed import ConfigError

    if section.criterion_options or create_criterion(section.criterion).requires_data:
        key = f"{path}.criterion" if path else "criterion"
        raise ConfigError(
            f"{key}: schedule 'soups' prunes with a data-free "
            f"criterion without options (e.g. magnitude), got {section.criterion!r}"
        )


register_recipe(
    Recipe(
        "soups",
        "Sparse Model Soups: average retrained copies of one pruned model per phase.",
        _configure,
        _stages,
        option_names=_option_names,
        validate=_validate,
    )
)


# ---------------------------------------------------------------------- the Python API
def _run_in(root: Path, ctx: RunContext) -> RunContext:
    """The recipe's stages keeping their files in ``root`` (``dense/`` for the dense run's
    checkpoint, ``phase_<j>/`` for the soups) so that the same call resumes."""
    for stage in _stages(ctx):
        directory = root / "dense" if stage.dense else root
        make_dirs(directory)
        stage.apply(ctx, stage.run(ctx, directory))
    return ctx


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
        checkpoint_every: Trainer checkpoint interval in iterations (default:
            ``train.checkpoint_every``, else every epoch).
        keep_checkpoints: keep the ingredients' Trainer checkpoints after their phase (by
            default they are deleted once the phase's ingredient files are written).
        callbacks: extra Trainer callbacks for every retraining run.

    Returns:
        An :class:`~prunekit.training.ExperimentResult` (``recipe="soups"``) whose phases are
        :class:`SoupPhase` records; ``to_dict()`` is plain JSON-ready data and ``masks`` the
        final mask set.
    """
    options = SoupsOptions(
        phases=phases,
        m=m,
        vary=vary,
        values=list(values) if values is not None else None,
        retrain_lr=retrain_lr,
        sparsities=list(sparsities) if sparsities is not None else None,
        merge=merge,
        workers=workers,
        bn_fraction=bn_fraction,
        keep_checkpoints=keep_checkpoints,
        callbacks=tuple(callbacks),
    )
    per_epoch = max(1, math.ceil(len(data.train) / train.batch_size))
    every = checkpoint_every or train.checkpoint_every or per_epoch
    spec = dataclasses.replace(train, checkpoint_every=every)
    fields = {"retrain_epochs": retrain_epochs, "retrain_schedule": retrain_schedule}
    fields["pretrained"] = pretrained
    root = Path(out_dir) if out_dir is not None else None
    if root is None:
        ctx = run_recipe("soups", model, data, spec, prune, options, **fields)
    else:
        ctx = _run_in(root, RunContext(model, data, spec, prune, options=options, **fields))
    targets = _phase_targets(ctx)
    # the arguments as plain data (callbacks are objects; keeping checkpoints changes nothing)
    skip = ("callbacks", "keep_checkpoints")
    recorded = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    recorded = {k: v for k, v in recorded.items() if k not in skip}
    recorded.update(phases=len(targets), sparsities=targets, pretrained=pretrained)
    recorded.update(retrain_epochs=retrain_epochs, retrain_schedule=retrain_schedule)
    config = spec_dict(train=train, prune=prune, **recorded)
    result = ctx.result("soups", config, phase_type=SoupPhase)
    if root is not None and (dist_info() if is_distributed() else (0, 1))[0] == 0:
        write_json(result.to_dict(), root / "result.json")
    return result


soups = run_soups  # prunekit.recipes.soups: the recipe's name
