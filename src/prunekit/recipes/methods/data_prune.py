"""Data pruning as a recipe: score, select, train on the kept subset (optionally KD).

Outputs (``<run>/data_prune/``): ``selection.safetensors`` (the kept indices, with the score,
fraction, rule and data fingerprint), ``model.safetensors`` and ``stage.json`` (written last).
Scores are shared by every run with the same dense settings, score and options:
``<output>/data_scores/<hash>/scores.safetensors``. The teacher is the run's dense model unless
``data_prune.kd.teacher`` names a state_dict file; the subset training checkpoints in
``<run>/data_prune/ckpt`` and resumes from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.serialization import load_safetensors, save_safetensors
from prunekit.data_pruning import (
    DATA_SCORES,
    DistillTrainer,
    IndexView,
    ScoreContext,
    compute_scores,
    fingerprint,
    labels_of,
    scores_cached,
    select,
    subset_iterations,
)
from prunekit.recipes.context import RunContext
from prunekit.recipes.dense import dense_stage
from prunekit.recipes.executor import Stage
from prunekit.recipes.files import locked, read_state_dict
from prunekit.recipes.registry import Recipe, register_recipe
from prunekit.training.lr import make_lr_schedule
from prunekit.training.trainer import Trainer, make_optimizer

__all__ = ["DataPruneOptions", "data_prune", "scores_path"]


@dataclass
class DataPruneOptions:
    """What to keep and how to train on it.

    ``score`` (a registered data score, ``prunekit list "data scores"``) with ``options`` (its
    keyword options); keep ``fraction`` of the training set: ``keep`` = ``hard``, ``easy`` or
    ``auto`` (hard when ``fraction >= auto_threshold``); ``class_balanced`` keeps each class's
    share; ``budget``: ``epochs`` (the dense run's epochs over the subset) or ``iterations``
    (the dense run's step count); ``kd_alpha`` > 0 distils from the dense model (or the
    ``kd_teacher`` state_dict file) at temperature ``kd_tau``; in a run directory the scores are
    cached below the output folder (:func:`scores_path`); ``on_mismatch``: what a cached file
    of other data does (``recompute`` or ``error``).
    """

    score: str
    fraction: float = 0.5
    keep: str = "auto"
    auto_threshold: float = 0.5
    class_balanced: bool = False
    budget: str = "epochs"
    kd_alpha: float = 0.0
    kd_tau: float = 4.0
    kd_teacher: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    on_mismatch: str = "recompute"


def scores_path(output: Path, dense_key: str, score: str, options: dict[str, Any]) -> Path:
    """Where scores are cached below ``output``: keyed by the dense slice of the config (its
    hash ``dense_key``), the score and its options, so that every run sharing them reuses one
    scoring."""
    key = {"dense": dense_key, "score": score, "options": options}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return output / "data_scores" / f"{score}-{digest}" / "scores.safetensors"


def _score_context(ctx: RunContext, teacher: nn.Module, ckpt: Path | None) -> ScoreContext:
    return ScoreContext(
        data=ctx.data.train,
        num_classes=ctx.data.num_classes,
        make_model=_factory(ctx),
        model=teacher,
        train=ctx.train,
        seed=ctx.train.seed,
        batch_size=max(ctx.train.batch_size, 256),
        augment=ctx.data.augment,
        checkpoint_dir=ckpt,
        checkpoint_every=ctx.train.checkpoint_every,
    )


def _factory(ctx: RunContext):
    if ctx.model_factory is None:
        raise ValueError("model_factory: data pruning builds fresh models; give a factory")
    return ctx.model_factory


def _selection(ctx: RunContext, teacher: nn.Module, sdir: Path | None) -> tuple[torch.Tensor, dict]:
    """The kept indices: read from the run when selected before, else scored and selected."""
    dp: DataPruneOptions = ctx.options
    path = None if sdir is None else sdir / "selection.safetensors"
    fp = fingerprint(ctx.data.train)
    if path is not None and path.is_file():
        tensors, meta = load_safetensors(path)
        if meta.get("fingerprint") != fp:
            raise ValueError(
                f"selection: {str(path)!r} was made on other training data; delete the run "
                "directory to select again"
            )
        return tensors["indices"], meta
    spath = None
    if ctx.dense_dir is not None and ctx.run_dir is not None:  # <output>/dense/<hash>
        spath = scores_path(ctx.dense_dir.parent.parent, ctx.dense_key, str(dp.score), dp.options)
    if spath is None:
        scores = compute_scores(str(dp.score), _score_context(ctx, teacher, None), **dp.options)
        smeta = {"reused": False, "seconds": float("nan")}
    else:
        with locked(spath.parent):  # parallel sweep arms share one scoring
            scores, smeta = scores_cached(
                str(dp.score), _score_context(ctx, teacher, spath.parent / "ckpt"), spath,
                options=dp.options, on_mismatch=dp.on_mismatch, data_fingerprint=fp,
            )  # fmt: skip
            shutil.rmtree(spath.parent / "ckpt", ignore_errors=True)
    ctx.log(
        f"data scores {dp.score}: {'reused' if smeta['reused'] else 'computed'} {spath}"
        + ("" if smeta["reused"] else f" ({smeta['seconds']:.1f} s)")
    )
    labels = labels_of(ctx.data.train)
    chosen = select(scores, dp.fraction, dp.keep, labels=labels,
                    class_balanced=dp.class_balanced, auto_threshold=dp.auto_threshold)  # fmt: skip
    meta = {
        "score": dp.score,
        "fraction": dp.fraction,
        "keep": dp.keep,
        "rule": chosen.keep,
        "class_balanced": dp.class_balanced,
        "kept": len(chosen),
        "num_examples": len(ctx.data.train),
        "fingerprint": fp,
        "scores_file": None if spath is None else str(spath),
        "score_seconds": float(smeta.get("seconds", float("nan"))),
        "scores_reused": bool(smeta["reused"]),
    }
    if path is not None:
        save_safetensors({"indices": chosen.indices}, path, meta)
    return chosen.indices, meta


def _load_teacher(teacher: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data_prune.kd.teacher: no such file {str(path)!r}")
    try:
        teacher.load_state_dict(read_state_dict(path))
    except RuntimeError as err:
        raise ValueError(
            f"data_prune.kd.teacher: {str(path)!r} does not fit the model of this run: {err}"
        ) from None


def _train_subset(ctx: RunContext, sdir: Path | None) -> dict[str, Any]:
    """Score and select with the dense model (the teacher), then train a fresh copy of the
    initialisation on the kept subset (optionally distilling); ``ctx.model`` ends up holding it."""
    dp: DataPruneOptions = ctx.options
    model = ctx.model
    indices, meta = _selection(ctx, model, sdir)
    t = ctx.train
    its = subset_iterations(dp.budget, len(indices), len(ctx.data.train), t.batch_size, t.epochs)
    student = _factory(ctx)(t.seed)  # the dense run's initialisation
    optimizer = make_optimizer(student, t.optimizer, t.lr, t.momentum, t.weight_decay, t.nesterov)
    schedule = make_lr_schedule(t.lr_schedule, t.lr, its)
    ckpt = None if sdir is None else sdir / "ckpt"
    kwargs: dict[str, Any] = dict(
        optimizer=optimizer, lr_schedule=schedule, iterations=its, batch_size=t.batch_size,
        task=ctx.data.task, augment=ctx.data.augment, device=t.device, seed=t.seed,
        progress=t.progress, checkpoint_dir=ckpt,
        checkpoint_every=t.checkpoint_every if ckpt is not None else None,
    )  # fmt: skip
    subset = IndexView(ctx.data.train, indices)
    kd = dp.kd_alpha > 0
    ctx.log(
        f"data pruning: training on {len(indices)} of {len(ctx.data.train)} examples "
        f"({meta['rule']}, {dp.score}), {its} iterations"
        + (f", KD alpha={dp.kd_alpha} tau={dp.kd_tau}" if kd else "")
    )
    if kd:
        teacher = _factory(ctx)(t.seed)
        if dp.kd_teacher is None:
            teacher.load_state_dict(model.state_dict())
        else:
            _load_teacher(teacher, Path(dp.kd_teacher))
        trainer: Trainer = DistillTrainer(
            student, subset, teacher=teacher, alpha=dp.kd_alpha, tau=dp.kd_tau, **kwargs
        )
    else:
        trainer = Trainer(student, subset, **kwargs)
    trainer.fit(resume=True)
    model.load_state_dict(student.state_dict())
    ctx.masks = MaskSet()
    metrics = ctx.metrics()
    phases = [
        {
            "phase": 1,
            "target_sparsity": 0.0,
            "sparsity": 0.0,
            "retrain_schedule": f"data_prune_{dp.budget}",
            "retrain_iterations": its,
            "lr0": schedule.lr_at(0),
            "pruned": {},
            "retrained": metrics,
        }
    ]
    extra = {
        "target_sparsity": 0.0,
        "data_prune": {
            **meta,
            "kd": {"alpha": dp.kd_alpha, "tau": dp.kd_tau, "teacher": dp.kd_teacher or "dense"}
            if kd
            else None,
            "budget": dp.budget,
            "iterations": its,
            "selection_file": None if sdir is None else str(sdir / "selection.safetensors"),
        },
    }
    ctx.log(f"data pruning: trained ({', '.join(f'{k}={v:.4f}' for k, v in metrics.items())})")
    return {"phases": phases, "extra": extra}


def _apply(ctx: RunContext, record: dict[str, Any]) -> None:
    ctx.masks = MaskSet()
    ctx.phases.extend(record["phases"])
    ctx.extra.update(record["extra"])


def _stages(ctx: RunContext) -> list[Stage]:
    DATA_SCORES.get(str(ctx.options.score), argument="data_prune.score")
    return [dense_stage(), Stage("data_prune", _train_subset, _apply, keeps_masks=False)]


def _configure(cfg: Any) -> DataPruneOptions:
    dp = cfg.data_prune
    return DataPruneOptions(
        score=dp.score,
        fraction=dp.fraction,
        keep=dp.keep,
        auto_threshold=dp.auto_threshold,
        class_balanced=dp.class_balanced,
        budget=dp.budget,
        kd_alpha=dp.kd.alpha,
        kd_tau=dp.kd.tau,
        kd_teacher=dp.kd.teacher,
        options=dict(dp.options),
        on_mismatch=dp.on_mismatch,
    )


register_recipe(
    Recipe(
        "data_prune",
        "Data pruning: score the training examples, train on the kept subset (optionally KD).",
        _configure,
        _stages,
        selected_by="data_prune.score",
        prunes_weights=False,
        label=lambda cfg: cfg.data_prune.label(),
    )
)


def data_prune(
    model: nn.Module,
    data: Any,
    train: Any,
    *,
    model_factory: Callable[[int], nn.Module],
    score: str,
    fraction: float = 0.5,
    keep: str = "auto",
    auto_threshold: float = 0.5,
    class_balanced: bool = False,
    budget: str = "epochs",
    kd_alpha: float = 0.0,
    kd_tau: float = 4.0,
    kd_teacher: str | None = None,
    options: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> Any:
    """Data pruning: train ``model`` densely (unless ``pretrained``), score the training
    examples with it, keep ``fraction`` of them and train a fresh copy of the initialisation
    (``model_factory(train.seed)``) on that subset; ``model`` ends up holding the result.

    ``model_factory(seed)`` builds the architecture under ``torch.manual_seed(seed)`` (scores
    such as EL2N train several fresh models). See :class:`DataPruneOptions` for the rest.
    Returns an :class:`~prunekit.recipes.spec.ExperimentResult` whose ``details`` hold the
    selection (rule, kept count, score time).
    """
    from prunekit.recipes.registry import run_recipe
    from prunekit.recipes.spec import PruneSpec

    opts = DataPruneOptions(
        score=score,
        fraction=fraction,
        keep=keep,
        auto_threshold=auto_threshold,
        class_balanced=class_balanced,
        budget=budget,
        kd_alpha=kd_alpha,
        kd_tau=kd_tau,
        kd_teacher=kd_teacher,
        options=dict(options or {}),
    )
    ctx = run_recipe(
        "data_prune", model, data, train, PruneSpec(sparsity=0.0), opts, pretrained=pretrained,
        model_factory=model_factory,
    )  # fmt: skip
    config = {"train": dataclasses.asdict(train), "data_prune": dataclasses.asdict(opts)}
    return ctx.result("data_prune", config, details=ctx.extra["data_prune"])
