"""What the stages of one recipe share: the model, the data, the typed options, the run's state.

The Python API and ``prunekit run`` build the same :class:`RunContext` (the CLI from a config
file, the API from keyword arguments) and run the same stages on it, so both give the same
weights. With ``run_dir`` the stages keep their outputs in files and a run resumes; without it
everything stays in memory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.prune import compute_masks
from prunekit.data.base import DatasetBundle, TensorData
from prunekit.recipes.spec import ExperimentResult, PhaseResult, PruneSpec, TrainSpec
from prunekit.training.lr import LRSchedule, make_lr_schedule
from prunekit.training.trainer import Callback, Trainer, evaluate, make_optimizer

__all__ = [
    "RunContext",
    "iterations_per_epoch",
    "make_trainer",
    "masks_for",
    "metrics_of",
    "original_schedule",
]


def metrics_of(model: nn.Module, data: DatasetBundle) -> dict[str, float]:
    """Validation (when the data set has a split) and test metrics, ``val_`` / ``test_`` prefixed."""
    out: dict[str, float] = {}
    if len(data.val):
        out.update({f"val_{k}": v for k, v in evaluate(model, data.val, task=data.task).items()})
    out.update({f"test_{k}": v for k, v in evaluate(model, data.test, task=data.task).items()})
    return out


def make_trainer(
    model: nn.Module,
    train_data: TensorData,
    spec: TrainSpec,
    schedule: LRSchedule,
    iterations: int,
    masks: MaskSet | None,
    seed: int,
    ckpt: Path | None,
    *,
    task: str = "classification",
    augment: Any = None,
    callbacks: Sequence[Callback] | None = None,
    distributed: bool | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Trainer:
    """A Trainer for ``iterations`` steps of ``schedule`` with ``spec``'s optimizer settings.

    With ``ckpt`` it checkpoints there every ``spec.checkpoint_every`` iterations (and at the
    end) and resumes from it. ``distributed=False`` keeps one process's run to itself inside a
    multi-process job (e.g. one soup ingredient per rank). ``optimizer``: one built over
    ``model`` by the recipe (default: ``spec``'s).
    """
    if optimizer is None:
        optimizer = make_optimizer(
            model, spec.optimizer, spec.lr, spec.momentum, spec.weight_decay, spec.nesterov
        )
    return Trainer(
        model,
        train_data,
        optimizer=optimizer,
        lr_schedule=schedule,
        iterations=iterations,
        batch_size=spec.batch_size,
        masks=masks,
        task=task,
        augment=augment,
        device=spec.device,
        seed=seed,
        callbacks=list(callbacks or []),
        progress=spec.progress,
        checkpoint_dir=ckpt,
        checkpoint_every=spec.checkpoint_every if ckpt is not None else None,
        distributed=distributed,
    )


def iterations_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps in one epoch (the last, smaller batch included)."""
    return max(1, math.ceil(num_examples / batch_size))


def original_schedule(spec: TrainSpec, data: DatasetBundle) -> LRSchedule:
    """The LR schedule of the dense run described by ``spec`` (at least one step)."""
    total = int(round(spec.epochs * iterations_per_epoch(len(data.train), spec.batch_size)))
    return make_lr_schedule(spec.lr_schedule, spec.lr, max(total, 1))


def masks_for(
    spec: PruneSpec,
    model: nn.Module,
    target: float,
    masks: MaskSet | None,
    seed: int,
    calibration: Callable[[], list[tuple[torch.Tensor, ...]]] | None = None,
) -> MaskSet:
    """Masks of ``model`` at sparsity ``target`` (nested in ``masks``) as ``spec`` says; a
    data-driven criterion scores on ``calibration()``."""
    from prunekit.criteria import create_criterion

    options = spec.criterion_options or None
    needs_data = create_criterion(spec.method, **(options or {})).requires_data
    if needs_data and calibration is None:
        raise ValueError(f"method: criterion {spec.method!r} needs calibration data")
    return compute_masks(
        model,
        target,
        spec.method,
        spec.allocation,
        targets=spec.targets,
        masks=masks,
        min_keep=spec.min_keep,
        data=calibration() if needs_data and calibration is not None else None,
        seed=seed,
        criterion_options=options,
    )


def _no_log(message: str) -> None:
    return None


@dataclass
class RunContext:
    """The inputs of a recipe's stages and the state they hand on to each other.

    Inputs: ``model`` (changed in place), ``data``, ``train`` (the dense run), ``prune``,
    ``retrain_epochs`` (None: the dense run's length) / ``retrain_schedule``, ``options`` (the
    recipe's own typed options), ``pretrained`` (the model is trained: the dense stage only
    measures it) or ``dense_checkpoint`` (loads the user's dense weights into the model and
    returns where they came from, instead of training), ``model_factory(seed)`` (a fresh model
    of the run's architecture initialised under ``torch.manual_seed(seed)``).

    Files: ``run_dir`` (None: in memory), ``dense_dir`` (shared by runs with the same dense
    slice), ``run_key`` / ``dense_key`` (the config hashes stamped into every output).

    State: ``dense`` (dense metrics and iterations), ``masks``, ``phases`` (one record per
    pruning phase), ``extra`` (recipe-specific result entries), ``memory`` (in-memory stand-ins
    for files, e.g. the initial weights for rewinding).
    """

    model: nn.Module
    data: DatasetBundle
    train: TrainSpec
    prune: PruneSpec
    retrain_epochs: float | None = None
    retrain_schedule: str = "llr"
    options: Any = None
    pretrained: bool = False
    dense_checkpoint: Callable[[nn.Module], str] | None = None
    model_factory: Callable[[int], nn.Module] | None = None
    log: Callable[[str], None] = _no_log
    run_dir: Path | None = None
    dense_dir: Path | None = None
    run_key: str = ""
    dense_key: str = ""
    dense: dict[str, Any] = field(default_factory=lambda: {"metrics": {}, "iterations": 0})
    dense_iterations: int = 0
    masks: MaskSet | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ lengths and schedules
    def iterations(self, epochs: float) -> int:
        """Training steps in ``epochs`` epochs (the last, smaller batch included)."""
        if epochs < 0:
            raise ValueError(f"epochs: expected a non-negative number, got {epochs}")
        per_epoch = iterations_per_epoch(len(self.data.train), self.train.batch_size)
        return int(round(epochs * per_epoch))

    @functools.cached_property
    def original(self) -> LRSchedule:
        """The LR schedule of the dense run; retraining schedules are derived from it."""
        return original_schedule(self.train, self.data)

    def retrain_iterations(self) -> int:
        """Retraining steps per phase: ``retrain_epochs``, or the dense run's length."""
        if self.retrain_epochs is None:
            return self.original.total
        return self.iterations(self.retrain_epochs)

    def result(
        self,
        recipe: str,
        config: dict[str, Any],
        details: dict[str, Any] | None = None,
        phase_type: type[PhaseResult] = PhaseResult,
    ) -> ExperimentResult:
        """The Python API's result: the phases the stages recorded (as ``phase_type``, a
        :class:`PhaseResult` with the recipe's own fields), the final metrics (the last
        phase's), the dense and retraining iterations and the final masks."""
        phases = [phase_type(**p) for p in self.phases]
        return ExperimentResult(
            recipe,
            self.dense["metrics"],
            phases,
            phases[-1].retrained,
            self.dense_iterations,
            sum(p.retrain_iterations for p in phases),
            config,
            self.masks,
            details=dict(details if details is not None else self.extra.get("details", {})),
        )

    # ------------------------------------------------------------------ the building blocks
    def metrics(self) -> dict[str, float]:
        """The model's metrics on the validation and test splits."""
        return metrics_of(self.model, self.data)

    def calibration(self) -> list[tuple[torch.Tensor, ...]]:
        """The first training batches, for data-driven criteria."""
        n, bs = self.prune.calibration_batches, self.prune.calibration_batch_size
        x, y = self.data.train.x, self.data.train.y
        return [
            (x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs])
            for i in range(n)
            if i * bs < len(x)
        ]

    def compute_masks(
        self, model: nn.Module, target: float, masks: MaskSet | None, seed: int
    ) -> MaskSet:
        """Masks of ``model`` at sparsity ``target`` (nested in ``masks``) with the prune spec;
        data-driven criteria score on :meth:`calibration`."""
        return masks_for(self.prune, model, target, masks, seed, self.calibration)

    def fit(
        self,
        schedule: LRSchedule,
        iterations: int,
        masks: MaskSet | None,
        seed: int,
        ckpt: Path | None,
        callbacks: list[Callback] | None = None,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Trainer:
        """Train ``model`` (default: the context's) for ``iterations`` steps of ``schedule``;
        with ``ckpt`` the Trainer checkpoints there and resumes from it. ``optimizer``: one
        the recipe built over ``model`` (default: the train spec's)."""
        model = self.model if model is None else model
        trainer = make_trainer(
            model,
            self.data.train,
            self.train,
            schedule,
            iterations,
            masks,
            seed,
            ckpt,
            task=self.data.task,
            augment=self.data.augment,
            callbacks=callbacks,
            optimizer=optimizer,
        )
        trainer.fit(resume=True)
        return trainer
