"""Compression-aware training with stochastic Frank-Wolfe on the Trainer, then compression.

* :class:`SFWSpec`: the constraint and optimizer settings (see :mod:`prunekit.frank_wolfe`).
* :func:`make_sfw_optimizer`: an :class:`~prunekit.frank_wolfe.SFW` over a model, ready for
  ``Trainer(optimizer=...)`` (the Trainer's LR schedule sets the Frank-Wolfe LR eta).
* :class:`FrankWolfeCallback`: makes the starting point feasible on a fresh start and reports
  ``fw_max_norm_ratio`` (norm / radius, at most 1 when feasible) at every epoch end.
* :func:`run_sfw`: train with SFW (or, with ``sfw=None``, the plain optimizer of ``train``:
  the baseline), then compress copies of the model at several levels by magnitude, filter norm
  or truncated SVD, and report the accuracy without and (optionally) with retraining.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.device import resolve_device
from prunekit.core.masks import MaskSet
from prunekit.core.prune import prune as prune_model
from prunekit.core.serialization import write_json
from prunekit.core.targets import Targets
from prunekit.data.base import DatasetBundle
from prunekit.frank_wolfe.compress import low_rank, prune_filters
from prunekit.frank_wolfe.groups import constraints_for_model
from prunekit.frank_wolfe.optimizer import RESCALE_MODES, SFW
from prunekit.training.lr import list_retrain_schedules, make_lr_schedule
from prunekit.training.recipes import (
    ExperimentResult,
    PhaseResult,
    TrainSpec,
    _config,
    _epochs_to_iterations,
    _metrics,
    _retrain_schedule,
    original_schedule,
)
from prunekit.training.soups import recalibrate_batchnorm
from prunekit.training.trainer import Callback, Trainer, make_optimizer

COMPRESS = ("magnitude", "filters", "low_rank")
DEFAULT_LEVELS = {
    "magnitude": (0.5, 0.7, 0.8, 0.9, 0.95),
    "filters": (0.25, 0.5, 0.75),
    "low_rank": (0.5, 0.25, 0.125),
}


@dataclass
class SFWSpec:
    """Stochastic Frank-Wolfe settings (:func:`prunekit.frank_wolfe.constraints_for_model`, SFW).

    Attributes:
        constraint: the set of the prunable weights (``k_support``, ``k_sparse``,
            ``group_k_support``, ``spectral_k_support``, ``nuclear``, ``l1``, ``l2``, ``linf``).
        k / k_fraction: for the k-sets, a count or a fraction per layer (or of all targets with
            ``scope="global"``).
        tau / radius: L2 diameter ``2 * tau * E||W_init||`` per set, or a fixed radius.
        lr: the Frank-Wolfe learning rate eta; the Trainer's schedule (shape ``train.lr_schedule``)
            peaks at it.
        momentum / rescale / k_delay: as in :class:`~prunekit.frank_wolfe.SFW`.
        others / others_lr: the set for non-target parameters (biases, norms), or None for a
            momentum SGD step with ``others_lr`` (default: ``lr``), scaled with the schedule.
        scope: ``"layer"`` or ``"global"``.
        targets: the constrained (and later compressed) weights (default: Linear / Conv weights).
        options: extra constraint options (e.g. ``{"svd_method": "power"}``).
    """

    constraint: str = "k_support"
    k: int | float | None = None
    k_fraction: float | None = 0.05
    tau: float = 10.0
    radius: float | None = None
    lr: float = 1.0
    momentum: float = 0.9
    rescale: str | None = "gradient"
    k_delay: int = 0
    others: str | None = "l2"
    others_lr: float | None = None
    scope: str = "layer"
    targets: Targets | None = None
    options: dict[str, Any] = field(default_factory=dict)


_K_FREE = ("l1", "l2", "linf", "nuclear")


def make_sfw_optimizer(model: nn.Module, sfw: SFWSpec) -> SFW:
    """An SFW optimizer over ``model`` built from ``sfw`` (not yet made feasible).

    Unconstrained groups with their own ``others_lr`` get ``lr_scale = others_lr / lr`` so that
    the Trainer's LR schedule scales them along with the Frank-Wolfe groups.
    """
    if not isinstance(sfw, SFWSpec):
        raise TypeError(f"sfw: expected an SFWSpec, got {type(sfw).__name__}")
    if sfw.rescale not in RESCALE_MODES:
        raise ValueError(
            f"rescale: expected 'gradient', 'diameter', 'fast_gradient' or None, got {sfw.rescale!r}"
        )
    k, k_fraction = sfw.k, sfw.k_fraction
    if sfw.constraint in _K_FREE:
        k, k_fraction = None, None
    elif k is not None:
        k_fraction = None
    groups = constraints_for_model(
        model,
        sfw.constraint,
        k=k,
        k_fraction=k_fraction,
        tau=sfw.tau,
        radius=sfw.radius,
        targets=sfw.targets,
        others=sfw.others,
        others_lr=sfw.others_lr,
        scope=sfw.scope,
        **sfw.options,
    )
    for group in groups:
        if group.get("constraint") is None and sfw.others_lr is not None and sfw.lr > 0:
            group["lr_scale"] = sfw.others_lr / sfw.lr
    return SFW(groups, lr=sfw.lr, momentum=sfw.momentum, rescale=sfw.rescale, k_delay=sfw.k_delay)


class FrankWolfeCallback(Callback):
    """Feasible start and feasibility reports for an SFW optimizer trained by the Trainer.

    On a fresh start (iteration 0) every constrained group is rescaled into its set; a resumed
    run keeps its checkpointed (already feasible) weights. At each epoch end the largest
    norm / radius ratio over the groups is added to the metrics as ``fw_max_norm_ratio``.
    With ``check_every_step`` the largest ratio seen after any step is kept in ``max_ratio``.
    """

    def __init__(self, check_every_step: bool = False) -> None:
        self.check_every_step = check_every_step
        self.max_ratio = 0.0
        self.scale_factors: list[float] = []

    @staticmethod
    def _optimizer(trainer: Trainer) -> SFW:
        if not isinstance(trainer.optimizer, SFW):
            raise TypeError(
                f"optimizer: FrankWolfeCallback needs an SFW optimizer, "
                f"got {type(trainer.optimizer).__name__}"
            )
        return trainer.optimizer

    def ratio(self, trainer: Trainer) -> float:
        """Largest norm / radius over the constrained groups now."""
        ratios = [r for r in self._optimizer(trainer).feasibility() if r is not None]
        return max(ratios, default=0.0)

    def on_fit_start(self, trainer: Trainer) -> None:
        optimizer = self._optimizer(trainer)
        if trainer.iteration == 0:
            self.scale_factors = optimizer.make_feasible()
        self.max_ratio = max(self.max_ratio, self.ratio(trainer))

    def on_step_end(self, trainer: Trainer, loss: Tensor) -> None:
        if self.check_every_step:
            self.max_ratio = max(self.max_ratio, self.ratio(trainer))

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        ratio = self.ratio(trainer)
        self.max_ratio = max(self.max_ratio, ratio)
        metrics["fw_max_norm_ratio"] = ratio


@dataclass
class CompressionResult(PhaseResult):
    """One compression level of :func:`run_sfw`.

    ``target_sparsity`` is the requested level (a sparsity, a fraction of filters removed, or a
    rank fraction for ``low_rank``); ``sparsity`` is the fraction of target weights that are zero
    (``low_rank``: 0); ``params_ratio`` is parameters after / before (``low_rank`` with
    factorisation shrinks the model; masks keep its size).
    """

    compress: str = "magnitude"
    params_ratio: float = 1.0
    ranks: dict[str, int] = field(default_factory=dict)


def _check_run_options(
    compress: str, levels: Sequence[float], retrain_epochs: float, retrain_schedule: str
) -> None:
    if compress not in COMPRESS:
        raise ValueError(f"compress: expected one of {', '.join(COMPRESS)}, got {compress!r}")
    if not levels:
        raise ValueError("levels: expected at least one compression level")
    for level in levels:
        ok = isinstance(level, (int, float)) and not isinstance(level, bool)
        if compress == "low_rank":
            ok = ok and 0.0 < level <= 1.0
        else:
            ok = ok and 0.0 <= level < 1.0
        if not ok:
            expected = "rank fractions in (0, 1]" if compress == "low_rank" else "values in [0, 1)"
            raise ValueError(f"levels: expected {expected} for {compress!r}, got {level!r}")
    if not isinstance(retrain_epochs, (int, float)) or retrain_epochs < 0:
        raise ValueError(f"retrain_epochs: expected a non-negative number, got {retrain_epochs!r}")
    names = list_retrain_schedules()
    if retrain_schedule.lower() not in names:
        raise ValueError(
            f"retrain_schedule: unknown retraining schedule {retrain_schedule!r}; "
            f"valid: {', '.join(names)}"
        )
    if compress == "low_rank" and retrain_schedule.lower() == "allr" and retrain_epochs > 0:
        raise ValueError("retrain_schedule: 'allr' needs pruning masks; not for low_rank")


def _bn_batches(model: nn.Module, data: DatasetBundle, batch_size: int, count: int) -> list[Any]:
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train), generator=gen, device="cpu")[: count * batch_size]
    x = data.train.x[order]
    return [(x[i : i + batch_size],) for i in range(0, len(x), batch_size)]


def run_sfw(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    sfw: SFWSpec | None,
    *,
    compress: str = "magnitude",
    levels: Sequence[float] | None = None,
    allocation: str | None = None,
    retrain_epochs: float = 0.0,
    retrain_schedule: str = "llr",
    factorize: bool = True,
    recalibrate_bn: bool = True,
    bn_batches: int = 8,
    pretrained: bool = False,
    out_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> ExperimentResult:
    """Train ``model`` with stochastic Frank-Wolfe, then compress it at every level.

    Args:
        model: trained in place (unless ``pretrained``); it ends trained and uncompressed (each
            level compresses its own copy).
        data: the dataset bundle.
        train: the run's length, batch size, LR schedule shape and seed. Frank-Wolfe training
            uses the schedule shape with peak ``sfw.lr``; retraining after compression uses
            ``train.optimizer`` with peak ``train.lr`` and a retraining schedule derived from
            ``train``'s dense schedule.
        sfw: constraint and optimizer settings (``SFWSpec()``: a k-support ball per layer with
            k = 5% of its entries, tau 10, lr 1.0). ``None`` trains with ``train.optimizer``
            instead: the baseline to compare with.
        compress: ``"magnitude"`` (unstructured, :func:`prunekit.prune`), ``"filters"`` (zero
            the output filters with the smallest L2 norm) or ``"low_rank"`` (truncated SVD).
        levels: sparsities (magnitude), fractions of filters removed (filters) or rank fractions
            (low_rank); defaults per method (``DEFAULT_LEVELS``).
        allocation: magnitude: any prunekit allocation (default ``"global"``); filters:
            ``"uniform"`` (default) or ``"global"``.
        retrain_epochs: retraining after compression (0: none). Masks stay fixed while
            retraining; a factorised low-rank model is retrained as it is.
        retrain_schedule: ``ft``, ``lrw``, ``slr``, ``clr``, ``llr`` or ``allr``.
        factorize: low_rank: replace layers by two thinner ones (else overwrite the weights).
        recalibrate_bn: recompute BatchNorm statistics after compression (``bn_batches``
            training batches), before measuring "without retraining".
        pretrained: skip training (compress ``model`` as it is).
        out_dir: keeps the training checkpoint (``train/``, so an interrupted run resumes) and
            ``result.json``.
        checkpoint_every: Trainer checkpoint interval in iterations (default: every epoch).

    Returns:
        An :class:`~prunekit.training.ExperimentResult` (``recipe="sfw"``): ``dense`` holds the
        trained model's metrics; ``phases`` one :class:`CompressionResult` per level with
        ``pruned`` (without retraining) and ``retrained`` (empty when ``retrain_epochs=0``);
        ``final`` the last level's; ``masks`` the last level's mask set (None for low_rank);
        ``config["max_norm_ratio"]`` the largest norm / radius seen (at most 1: feasible).
    """
    levels = list(levels) if levels is not None else list(DEFAULT_LEVELS.get(compress, ()))
    _check_run_options(compress, levels, retrain_epochs, retrain_schedule)
    if not isinstance(data, DatasetBundle):
        raise TypeError(f"data: expected a DatasetBundle, got {type(data).__name__}")
    if sfw is not None and not isinstance(sfw, SFWSpec):
        raise TypeError(f"sfw: expected an SFWSpec or None, got {type(sfw).__name__}")
    root = Path(out_dir) if out_dir is not None else None
    original = original_schedule(train, data)
    targets = sfw.targets if sfw is not None else None
    # the Trainer's default device; compression and evaluation run there too
    device = resolve_device(train.device, "train.device")
    model.to(device)

    dense_its = 0
    max_ratio: float | None = None
    if not pretrained:
        callbacks: list[Callback] = []
        if sfw is not None:
            optimizer: torch.optim.Optimizer = make_sfw_optimizer(model, sfw)
            schedule = make_lr_schedule(train.lr_schedule, sfw.lr, original.total)
            fw = FrankWolfeCallback(check_every_step=True)
            callbacks.append(fw)
        else:
            optimizer = make_optimizer(
                model, train.optimizer, train.lr, train.momentum, train.weight_decay, train.nesterov
            )
            schedule = original
        per_epoch = max(1, math.ceil(len(data.train) / train.batch_size))
        Trainer(
            model,
            data.train,
            optimizer=optimizer,
            lr_schedule=schedule,
            batch_size=train.batch_size,
            task=data.task,
            augment=data.augment,
            device=train.device,
            seed=train.seed,
            callbacks=callbacks,
            progress=train.progress,
            checkpoint_dir=root / "train" if root is not None else None,
            checkpoint_every=checkpoint_every or per_epoch,
        ).fit(resume=True)
        dense_its = original.total
        if sfw is not None:
            max_ratio = fw.max_ratio
    dense = _metrics(model, data)
    bn_data = _bn_batches(model, data, train.batch_size, bn_batches) if recalibrate_bn else []

    results: list[CompressionResult] = []
    masks: MaskSet | None = None
    total_retrain = 0
    params_before = sum(p.numel() for p in model.parameters())
    for index, level in enumerate(levels, start=1):
        work = copy.deepcopy(model)
        ranks: dict[str, int] = {}
        if compress == "magnitude":
            masks = prune_model(
                work, level, method="magnitude", allocation=allocation or "global", targets=targets
            )
        elif compress == "filters":
            masks = prune_filters(work, level, allocation or "uniform", targets)
        else:
            masks = None
            ranks = low_rank(work, rank_fraction=level, targets=targets, factorize=factorize).ranks
        if bn_data:
            recalibrate_batchnorm(work, bn_data, device=device)
        pruned = _metrics(work, data)
        its = _epochs_to_iterations(retrain_epochs, train, data)
        retrained: dict[str, float] = {}
        lr0 = 0.0
        if its > 0:
            schedule = _retrain_schedule(
                retrain_schedule, original, its, model, None, masks or MaskSet()
            )
            lr0 = float(getattr(schedule, "eta0", schedule.eta_max))
            Trainer(
                work,
                data.train,
                optimizer=make_optimizer(
                    work,
                    train.optimizer,
                    train.lr,
                    train.momentum,
                    train.weight_decay,
                    train.nesterov,
                ),
                lr_schedule=schedule,
                iterations=its,
                batch_size=train.batch_size,
                masks=masks,
                task=data.task,
                augment=data.augment,
                device=train.device,
                seed=train.seed + 1000 * index,
                progress=train.progress,
            ).fit(resume=False)
            retrained = _metrics(work, data)
            total_retrain += its
        results.append(
            CompressionResult(
                phase=index,
                target_sparsity=float(level),
                sparsity=masks.sparsity if masks is not None else 0.0,
                retrain_schedule=retrain_schedule if its > 0 else "none",
                retrain_iterations=its,
                lr0=lr0,
                pruned=pruned,
                retrained=retrained,
                compress=compress,
                params_ratio=sum(p.numel() for p in work.parameters()) / params_before,
                ranks=ranks,
            )
        )
    last = results[-1]
    result = ExperimentResult(
        "sfw",
        dense,
        results,  # type: ignore[arg-type]
        last.retrained or last.pruned,
        dense_its,
        total_retrain,
        _config(
            train=train,
            sfw=sfw,
            optimizer="sfw" if sfw is not None else train.optimizer,
            compress=compress,
            levels=levels,
            allocation=allocation,
            retrain_epochs=retrain_epochs,
            retrain_schedule=retrain_schedule,
            factorize=factorize,
            recalibrate_bn=recalibrate_bn,
            pretrained=pretrained,
            max_norm_ratio=max_ratio,
        ),
        masks,
    )
    if root is not None:
        write_json(result.to_dict(), root / "result.json")
    return result
