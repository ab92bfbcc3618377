"""Recipes beyond magnitude pruning: RigL, GraNet, pruning at initialisation and SAP.

Like the recipes in :mod:`prunekit.training.recipes`, each takes a model (changed in place), a
:class:`~prunekit.data.DatasetBundle` and a :class:`~prunekit.training.TrainSpec`, and returns an
:class:`~prunekit.training.ExperimentResult` of plain data (``to_dict()`` gives JSON); what is
specific to the method is in ``result.details``.

* :func:`run_rigl`: sparse from the start at a fixed sparsity, topology updated by RigL.
* :func:`run_granet`: dense (or sparse) to sparse with the GMP schedule plus drop-and-regrow.
* :func:`run_at_init`: prune the untrained network with any registered criterion, train it.
* :func:`run_sap`: SAP rounds (PQ Index decides how much to prune) with retraining.

PQ-Index logging over IMP rounds is ``run_imp(..., log_pq_index=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.at_init import prune_at_init
from prunekit.core.masks import MaskSet
from prunekit.core.pqi import SAPSchedule, pq_index_report
from prunekit.core.targets import Targets, select_targets
from prunekit.data.base import DatasetBundle, TensorData
from prunekit.training.dst import DSTCallback, GraNetCallback, RigLCallback
from prunekit.training.lr import LRSchedule
from prunekit.training.recipes import (
    ExperimentResult,
    PhaseResult,
    TrainSpec,
    _config,
    _epochs_to_iterations,
    _metrics,
    _pretrain,
    _retrain_schedule,
    _train,
    original_schedule,
)
from prunekit.training.trainer import Trainer, make_optimizer


def _fit(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    schedule: LRSchedule,
    *,
    masks: MaskSet | None = None,
    callbacks: list[Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> Trainer:
    """One Trainer run over ``schedule`` (resumed from ``checkpoint_dir`` when one is there)."""
    optimizer = make_optimizer(
        model, train.optimizer, train.lr, train.momentum, train.weight_decay, train.nesterov
    )
    trainer = Trainer(
        model,
        data.train,
        optimizer=optimizer,
        lr_schedule=schedule,
        batch_size=train.batch_size,
        masks=masks,
        task=data.task,
        augment=data.augment,
        device=train.device,
        seed=train.seed,
        callbacks=callbacks or [],
        progress=train.progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    trainer.fit(resume=checkpoint_dir is not None)
    return trainer


def _dst_result(
    recipe: str,
    model: nn.Module,
    data: DatasetBundle,
    schedule: LRSchedule,
    callback: DSTCallback,
    target: float,
    config: dict[str, Any],
) -> ExperimentResult:
    final = _metrics(model, data)
    masks = callback.masks.clone()
    phase = PhaseResult(
        phase=1,
        target_sparsity=target,
        sparsity=masks.sparsity,
        retrain_schedule="during_training",
        retrain_iterations=0,
        lr0=schedule.lr_at(0),
        pruned=final,
        retrained=final,
    )
    assert callback.dst is not None
    details = {
        "updates": list(callback.dst.history),
        "layer_sparsity": masks.layer_sparsity(),
    }
    return ExperimentResult(
        recipe, {}, [phase], final, schedule.total, 0, config, masks, details=details
    )


def _run_dst(
    recipe: str,
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    callback: DSTCallback,
    sparsity: float,
    config: dict,
    checkpoint_dir: str | Path | None,
    checkpoint_every: int | None,
) -> ExperimentResult:
    """Train with a dynamic-sparse-training callback over the original schedule, then report."""
    schedule = original_schedule(train, data)
    _fit(
        model,
        data,
        train,
        schedule,
        callbacks=[callback],
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    return _dst_result(recipe, model, data, schedule, callback, sparsity, config)


def run_rigl(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    *,
    sparsity: float,
    allocation: str = "erk",
    targets: Targets | None = None,
    delta_t: int = 100,
    alpha: float = 0.3,
    t_end_fraction: float = 0.75,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> ExperimentResult:
    """Train ``model`` sparse with RigL for ``train.epochs`` (Evci et al. 2020).

    The initial mask is random with ``allocation`` densities (ERK by default) at ``sparsity``;
    every ``delta_t`` steps until ``t_end_fraction`` of training each layer drops its
    smallest-magnitude weights and regrows as many with the largest gradients (drop fraction
    ``alpha``, cosine-decayed). ``details["updates"]`` has one summary per update.
    With ``checkpoint_dir`` the run checkpoints (every ``checkpoint_every`` steps and at the end)
    and resumes from a checkpoint found there.
    """
    callback = RigLCallback(
        sparsity,
        t_end_fraction=t_end_fraction,
        delta_t=delta_t,
        alpha=alpha,
        allocation=allocation,
        targets=targets,
        seed=train.seed,
    )
    config = _config(
        train=train,
        sparsity=sparsity,
        allocation=allocation,
        delta_t=delta_t,
        alpha=alpha,
        t_end_fraction=t_end_fraction,
    )
    return _run_dst(
        "rigl", model, data, train, callback, sparsity, config, checkpoint_dir, checkpoint_every
    )


def run_granet(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    *,
    sparsity: float,
    initial_sparsity: float = 0.0,
    allocation: str = "erk",
    targets: Targets | None = None,
    delta_t: int = 100,
    regrow_fraction: float = 0.5,
    start_fraction: float = 0.0,
    prune_end_fraction: float = 0.7,
    t_end_fraction: float = 0.75,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> ExperimentResult:
    """Train ``model`` with GraNet for ``train.epochs`` (Liu et al. 2021).

    Starting dense (or from a random ``initial_sparsity`` mask), the total sparsity follows the
    cubic GMP schedule from ``start_fraction`` to ``prune_end_fraction`` of training up to
    ``sparsity``; every update also drops and regrows ``regrow_fraction`` (cosine-decayed until
    ``t_end_fraction``) of each layer's weights. Checkpointing as for :func:`run_rigl`.
    """
    callback = GraNetCallback(
        sparsity,
        initial_sparsity=initial_sparsity,
        start_fraction=start_fraction,
        prune_end_fraction=prune_end_fraction,
        t_end_fraction=t_end_fraction,
        delta_t=delta_t,
        regrow_fraction=regrow_fraction,
        allocation=allocation,
        targets=targets,
        seed=train.seed,
    )
    config = _config(
        train=train,
        sparsity=sparsity,
        initial_sparsity=initial_sparsity,
        allocation=allocation,
        delta_t=delta_t,
        regrow_fraction=regrow_fraction,
        start_fraction=start_fraction,
        prune_end_fraction=prune_end_fraction,
        t_end_fraction=t_end_fraction,
    )
    return _run_dst(
        "granet", model, data, train, callback, sparsity, config, checkpoint_dir, checkpoint_every
    )


class ShuffledBatches:
    """Re-iterable ``(inputs, targets)`` batches of ``data`` in a seeded random order."""

    def __init__(self, data: TensorData, batch_size: int, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(
            len(self.data), generator=torch.Generator().manual_seed(self.seed), device="cpu"
        )
        for start in range(0, len(order), self.batch_size):
            yield self.data[order[start : start + self.batch_size]]


def run_at_init(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    method: str,
    sparsity: float,
    *,
    allocation: str = "global",
    targets: Targets | None = None,
    num_batches: int | None = None,
    criterion_batch_size: int | None = None,
    criterion_options: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> ExperimentResult:
    """Prune the untrained ``model`` with criterion ``method``, then train it sparse.

    The criterion scores batches of ``data.train`` (shuffled with ``train.seed``, of
    ``criterion_batch_size`` examples, default ``train.batch_size``; ``num_batches`` of them, or
    the criterion's default when None: SNIP / GraSP read 1, Taylor 8; SynFlow only reads the
    input shape). The sparse network is then trained for ``train.epochs`` with the masks kept.

    ``details["densities"]`` maps each layer to the density the criterion chose (what
    pruning at initialisation mostly contributes, Frankle et al. 2021) and
    ``details["density_table"]`` is the full :class:`~prunekit.core.at_init.DensityTable`.
    ``phases[0].pruned`` holds the metrics right after pruning, ``final`` after training.
    """
    options = dict(criterion_options or {})
    if num_batches is not None:
        options["num_batches"] = num_batches
    batches = ShuffledBatches(data.train, criterion_batch_size or train.batch_size, train.seed)
    masks, table = prune_at_init(
        model,
        method,
        sparsity,
        batches,
        allocation=allocation,
        targets=targets,
        seed=train.seed,
        criterion_options=options,
    )
    pruned = _metrics(model, data)
    schedule = original_schedule(train, data)
    trainer = _fit(
        model,
        data,
        train,
        schedule,
        masks=masks,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    final = _metrics(model, data)
    final_masks = trainer.masks.clone() if trainer.masks is not None else masks
    phase = PhaseResult(
        phase=1,
        target_sparsity=sparsity,
        sparsity=final_masks.sparsity,
        retrain_schedule="from_init",
        retrain_iterations=schedule.total,
        lr0=schedule.lr_at(0),
        pruned=pruned,
        retrained=final,
    )
    config = _config(
        train=train,
        method=method,
        sparsity=sparsity,
        allocation=allocation,
        num_batches=num_batches,
        criterion_batch_size=criterion_batch_size,
        criterion_options={k: v for k, v in options.items() if _plain(v)},
    )
    details = {"densities": table.densities(), "density_table": table.to_dict()}
    return ExperimentResult(
        f"at_init_{method}",
        {},
        [phase],
        final,
        0,
        schedule.total,
        config,
        final_masks,
        None,
        details,
    )


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))


def run_sap(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    *,
    rounds: int = 5,
    scope: str = "global",
    p: float = 0.5,
    q: float = 1.0,
    eta_r: float = 0.001,
    gamma: float = 1.2,
    beta: float = 0.9,
    targets: Targets | None = None,
    retrain_epochs: float | None = None,
    retrain_schedule: str = "ft",
    pretrained: bool = False,
) -> ExperimentResult:
    """SAP (Diao et al. 2023): ``rounds`` rounds of PQ-Index-sized magnitude pruning + retraining.

    Trains densely first (unless ``pretrained``). Each round measures the PQ Index, prunes
    ``c = ⌊d·clamp(γ(1 − r/d), 0, β)⌋`` of the d kept weights (one global amount and threshold,
    or per layer with ``scope="layer"``), then retrains for ``retrain_epochs`` (default: the
    dense run's length) with the named ``retrain_schedule`` (``"ft"``, ``"lrw"``, ``"clr"``,
    ``"allr"``, ...).

    ``details["rounds"]`` has one entry per round: kept weights and PQ Index before pruning
    (global and per layer), the SAP amounts (``keep_bound`` r and ``prune`` c, by scope key),
    the sparsity reached, and the PQ Index after retraining. ``details["dense_pq_index"]`` is
    the trained dense model's.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive integer, got {rounds!r}")
    sap = SAPSchedule(scope=scope, p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta, targets=targets)
    original = original_schedule(train, data)
    dense_its = _pretrain(model, data, train, original, pretrained)
    dense = _metrics(model, data)
    its = (
        original.total
        if retrain_epochs is None
        else _epochs_to_iterations(retrain_epochs, train, data)
    )
    params = select_targets(model, targets)
    if not params:
        raise ValueError("model: no prunable parameters for SAP")
    masks = MaskSet({n: torch.ones_like(w, dtype=torch.bool) for n, w in params.items()})
    pq = {"p": p, "q": q}
    dense_report = pq_index_report(model, masks, **pq)
    log: list[dict[str, Any]] = []
    results: list[PhaseResult] = []
    for r in range(1, rounds + 1):
        before_report = pq_index_report(model, masks, **pq)
        plan = sap.plan(model, masks)
        # ALLR needs the weights before pruning: keep a copy of the targets only for it.
        saved = (
            {n: w.detach().clone() for n, w in params.items()}
            if retrain_schedule.lower() == "allr" and its > 0
            else None
        )
        previous = masks
        masks = sap.prune_round(model, masks)
        schedule = None
        if its > 0:
            if saved is not None:
                with torch.no_grad():
                    for n, w in params.items():
                        w.copy_(saved[n])
            schedule = _retrain_schedule(retrain_schedule, original, its, model, previous, masks)
            masks.apply(model)
        pruned = _metrics(model, data)
        if schedule is not None:
            _train(model, data, train, schedule, its, masks, seed_offset=1000 * r)
        retrained = _metrics(model, data)
        after_report = pq_index_report(model, masks, **pq)
        log.append(
            {
                "round": r,
                "kept": {k: a.kept for k, a in plan.items()},
                "pq_index": before_report.global_index,
                "layer_pq_index": dict(before_report.layers),
                "keep_bound": {k: a.keep_bound for k, a in plan.items()},
                "prune": {k: a.prune for k, a in plan.items()},
                "sparsity": masks.sparsity,
                "layer_sparsity": masks.layer_sparsity(),
                "pq_index_retrained": after_report.global_index,
                "layer_pq_index_retrained": dict(after_report.layers),
            }
        )
        lr0 = float(getattr(schedule, "eta0", schedule.lr_at(0))) if schedule is not None else 0.0
        results.append(
            PhaseResult(
                phase=r,
                target_sparsity=masks.sparsity,
                sparsity=masks.sparsity,
                retrain_schedule=retrain_schedule,
                retrain_iterations=its,
                lr0=lr0,
                pruned=pruned,
                retrained=retrained,
            )
        )
    config = _config(
        train=train,
        rounds=rounds,
        scope=scope,
        p=p,
        q=q,
        eta_r=eta_r,
        gamma=gamma,
        beta=beta,
        retrain_epochs=retrain_epochs,
        retrain_schedule=retrain_schedule,
    )
    details = {"dense_pq_index": dense_report.to_dict(), "rounds": log}
    return ExperimentResult(
        "sap",
        dense,
        results,
        results[-1].retrained,
        dense_its,
        its * rounds,
        config,
        masks,
        None,
        details,
    )
