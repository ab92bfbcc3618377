"""The data-pruning stage of a run: score, select, train on the kept subset (optionally KD).

Outputs (``<run>/data_prune/``): ``selection.safetensors`` (the kept indices, with the score,
fraction, rule and data fingerprint), ``model.safetensors`` and ``stage.json`` (written last).
Scores are shared by every run with the same dense settings, score and options:
``<output>/data_scores/<hash>/scores.safetensors``. The teacher is the run's dense model unless
``data_prune.kd.teacher`` names a state_dict file; the subset training checkpoints in
``<run>/data_prune/ckpt`` and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.serialization import load_safetensors, read_json, save_safetensors, write_json
from prunekit.data_pruning import (
    DATA_SCORES,
    DistillTrainer,
    IndexView,
    ScoreContext,
    fingerprint,
    labels_of,
    scores_cached,
    select,
    subset_iterations,
)
from prunekit.experiments.config import ExperimentConfig, dense_hash
from prunekit.experiments.runner import (
    _Context,
    _dense_stage,
    _load_state,
    _locked,
    _metrics,
    _save_state,
    _train_spec,
    build_model,
    model_kwargs,
    read_state_dict,
)
from prunekit.training.lr import make_lr_schedule
from prunekit.training.trainer import Trainer, make_optimizer

__all__ = ["data_prune_stage", "scores_path"]


def scores_path(cfg: ExperimentConfig) -> Path:
    """Where the scores of ``cfg`` are cached (keyed by the dense settings, score, options)."""
    dp = cfg.data_prune
    key = {"dense": dense_hash(cfg, cfg.train.lr_schedule), "score": dp.score,
           "options": dp.options}  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.output) / "data_scores" / f"{dp.score}-{digest}" / "scores.safetensors"


def _score_context(ctx: _Context, teacher: nn.Module, ckpt: Path) -> ScoreContext:
    from prunekit.models import create_model

    cfg, data = ctx.cfg, ctx.data

    def make_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return create_model(cfg.model.name, **model_kwargs(cfg, data))

    return ScoreContext(
        data=data.train,
        num_classes=data.num_classes,
        make_model=make_model,
        model=teacher,
        train=_train_spec(cfg),
        seed=cfg.seed,
        batch_size=max(cfg.train.batch_size, 256),
        augment=data.augment,
        checkpoint_dir=ckpt,
        checkpoint_every=cfg.train.checkpoint_every,
    )


def _selection(ctx: _Context, teacher: nn.Module, sdir: Path) -> tuple[torch.Tensor, dict]:
    """The kept indices: read from the run when selected before, else scored and selected."""
    cfg, dp = ctx.cfg, ctx.cfg.data_prune
    path = sdir / "selection.safetensors"
    fp = fingerprint(ctx.data.train)
    if path.is_file():
        tensors, meta = load_safetensors(path)
        if meta.get("fingerprint") != fp:
            raise ValueError(
                f"selection: {str(path)!r} was made on other training data; delete the run "
                "directory to select again"
            )
        return tensors["indices"], meta
    spath = scores_path(cfg)
    with _locked(spath.parent):  # parallel sweep arms share one scoring
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
        "scores_file": str(spath),
        "score_seconds": float(smeta.get("seconds", float("nan"))),
        "scores_reused": bool(smeta["reused"]),
    }
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


def data_prune_stage(
    ctx: _Context, model: nn.Module, root: Path
) -> tuple[dict[str, Any], MaskSet, list[dict[str, Any]], dict[str, Any]]:
    """Dense model (the teacher), scores, selection, subset training; ``model`` ends up holding
    the subset-trained weights. Returns (dense result, empty masks, phases, extra result keys)."""
    cfg, dp = ctx.cfg, ctx.cfg.data_prune
    DATA_SCORES.get(str(dp.score), argument="data_prune.score")
    dense = _dense_stage(ctx, model)
    sdir = root / "data_prune"
    done = sdir / "stage.json"
    if done.is_file():
        _load_state(model, sdir / "model.safetensors")
        stage = read_json(done)
        return dense, MaskSet(), stage["phases"], stage["extra"]
    sdir.mkdir(parents=True, exist_ok=True)
    indices, meta = _selection(ctx, model, sdir)
    t = cfg.train
    its = subset_iterations(dp.budget, len(indices), len(ctx.data.train), t.batch_size, t.epochs)
    student = build_model(cfg, ctx.data)  # the dense run's initialisation
    optimizer = make_optimizer(student, t.optimizer, t.lr, t.momentum, t.weight_decay, t.nesterov)
    schedule = make_lr_schedule(t.lr_schedule, t.lr, its)
    kwargs: dict[str, Any] = dict(
        optimizer=optimizer, lr_schedule=schedule, iterations=its, batch_size=t.batch_size,
        task=ctx.data.task, augment=ctx.data.augment, device=t.device, seed=cfg.seed,
        progress=t.progress, checkpoint_dir=sdir / "ckpt", checkpoint_every=t.checkpoint_every,
    )  # fmt: skip
    subset = IndexView(ctx.data.train, indices)
    kd = dp.kd.alpha > 0
    ctx.log(
        f"data pruning: training on {len(indices)} of {len(ctx.data.train)} examples "
        f"({meta['rule']}, {dp.score}), {its} iterations"
        + (f", KD alpha={dp.kd.alpha} tau={dp.kd.tau}" if kd else "")
    )
    if kd:
        teacher = build_model(cfg, ctx.data)
        if dp.kd.teacher is None:
            teacher.load_state_dict(model.state_dict())
        else:
            _load_teacher(teacher, Path(dp.kd.teacher))
        trainer: Trainer = DistillTrainer(
            student, subset, teacher=teacher, alpha=dp.kd.alpha, tau=dp.kd.tau, **kwargs
        )
    else:
        trainer = Trainer(student, subset, **kwargs)
    trainer.fit(resume=True)
    model.load_state_dict(student.state_dict())
    metrics = _metrics(model, ctx.data)
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
            "kd": {"alpha": dp.kd.alpha, "tau": dp.kd.tau, "teacher": dp.kd.teacher or "dense"}
            if kd
            else None,
            "budget": dp.budget,
            "iterations": its,
            "selection_file": str(sdir / "selection.safetensors"),
        },
    }
    _save_state(model, sdir / "model.safetensors")
    write_json({"phases": phases, "extra": extra}, done)
    shutil.rmtree(sdir / "ckpt", ignore_errors=True)
    ctx.log(f"data pruning: trained ({', '.join(f'{k}={v:.4f}' for k, v in metrics.items())})")
    return dense, MaskSet(), phases, extra
