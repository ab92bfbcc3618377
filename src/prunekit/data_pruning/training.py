"""Short training runs that scores take their model from (EL2N, GraNd, forgetting)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from prunekit.data_pruning.base import ScoreContext
from prunekit.training.lr import make_lr_schedule
from prunekit.training.trainer import Callback, Trainer, make_optimizer

__all__ = ["iterations_per_epoch", "train_for_score"]


def iterations_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n`` examples (the last batch may be short)."""
    return max(1, math.ceil(n / batch_size))


def train_for_score(
    ctx: ScoreContext, seed: int, epochs: float, callbacks: Sequence[Callback] = ()
) -> nn.Module:
    """A fresh model (``ctx.make_model(seed)``) trained ``epochs`` epochs on ``ctx.data``.

    The LR schedule spans the full ``ctx.train.epochs`` run and is cut after ``epochs``, so the
    model is the one an ordinary training run has at that epoch ("early in training").
    """
    model = ctx.fresh_model(seed)
    device = ctx.resolved_device()
    model.to(device)
    t = ctx.train
    per_epoch = iterations_per_epoch(len(ctx.data), t.batch_size)
    its = int(round(epochs * per_epoch))
    if its <= 0:
        return model
    full = max(its, int(round(t.epochs * per_epoch)))
    optimizer = make_optimizer(model, t.optimizer, t.lr, t.momentum, t.weight_decay, t.nesterov)
    ckpt = None if ctx.checkpoint_dir is None else Path(ctx.checkpoint_dir) / f"seed{seed}"
    Trainer(
        model,
        ctx.data,
        optimizer=optimizer,
        lr_schedule=make_lr_schedule(t.lr_schedule, t.lr, full),
        iterations=its,
        batch_size=t.batch_size,
        augment=ctx.augment,
        device=device,
        seed=seed,
        callbacks=callbacks,
        checkpoint_dir=ckpt,
        checkpoint_every=ctx.checkpoint_every if ckpt is not None else None,
    ).fit(resume=ckpt is not None)
    return model
