"""Dynamic sparse training: RigL (Evci et al. 2020) and GraNet (Liu et al. 2021).

Both are one training run from the initialisation (stage ``phase_1``, no dense model) with a
drop-and-regrow callback on the Trainer; they differ only in their typed options and callback.
The run checkpoints in the stage's directory (or the API's ``checkpoint_dir``), and the
callback's step counter and update history travel in the checkpoint, so a killed run resumes
exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.core.targets import Targets
from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage
from prunekit.recipes.registry import Recipe, register_recipe
from prunekit.recipes.single_run import (
    during_training_record,
    fit_from_init,
    phase_stage,
    run_in_memory,
)
from prunekit.recipes.spec import ExperimentResult, PruneSpec, TrainSpec, spec_dict
from prunekit.training.dst import DSTCallback, GraNetCallback, RigLCallback

__all__ = ["GraNetOptions", "RigLOptions", "granet", "rigl"]


@dataclass
class RigLOptions:
    """RigL: every ``delta_t`` steps until ``t_end_fraction`` of training, each layer drops its
    smallest-magnitude weights and regrows as many with the largest gradients (drop fraction
    ``alpha``, cosine-decayed)."""

    delta_t: int = 100
    alpha: float = 0.3
    t_end_fraction: float = 0.75


@dataclass
class GraNetOptions:
    """GraNet: from ``initial_sparsity`` the total sparsity follows the cubic GMP schedule from
    ``start_fraction`` to ``prune_end_fraction`` of training; every ``delta_t`` steps until
    ``t_end_fraction`` it also drops and regrows ``regrow_fraction`` (cosine-decayed)."""

    initial_sparsity: float = 0.0
    delta_t: int = 100
    regrow_fraction: float = 0.5
    start_fraction: float = 0.0
    prune_end_fraction: float = 0.7
    t_end_fraction: float = 0.75


# recipe name -> (typed options, the Trainer callback they configure)
_KINDS: dict[str, tuple[type, type[DSTCallback]]] = {
    "rigl": (RigLOptions, RigLCallback),
    "granet": (GraNetOptions, GraNetCallback),
}


def _callback(name: str, ctx: RunContext) -> DSTCallback:
    p = ctx.prune
    options = dataclasses.asdict(ctx.options)
    return _KINDS[name][1](
        p.sparsity, allocation=p.allocation, targets=p.targets, seed=ctx.train.seed, **options
    )


def _train_stage(name: str) -> Stage:
    def run(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
        callback = _callback(name, ctx)
        ctx.log(f"{name}: training {ctx.original.total} iterations at {ctx.prune.sparsity}")
        trainer = fit_from_init(ctx, directory, callback)
        ctx.masks = callback.masks.clone()
        trainer.set_masks(None)
        assert callback.dst is not None
        details = {
            "updates": list(callback.dst.history),
            "layer_sparsity": ctx.masks.layer_sparsity(),
        }
        return {**during_training_record(ctx), "details": details}

    return phase_stage(run, _after)


def _after(ctx: RunContext) -> None:
    ctx.dense_iterations = ctx.original.total  # the one training run, as for GMP


def _stages_of(name: str):
    def stages(ctx: RunContext) -> list[Stage]:
        _callback(name, ctx)  # option errors surface before any training
        return [_train_stage(name)]

    return stages


def _configure_of(name: str):
    def configure(cfg: Any) -> Any:
        return _KINDS[name][0](**cfg.prune.options)

    return configure


def _option_names_of(name: str):
    return lambda: [f.name for f in dataclasses.fields(_KINDS[name][0])]


for _name, _doc in (
    ("rigl", "RigL dynamic sparse training: drop by magnitude, grow by gradient."),
    ("granet", "GraNet: gradual pruning plus RigL-style regrowth during training."),
):
    register_recipe(
        Recipe(
            _name,
            _doc,
            _configure_of(_name),
            _stages_of(_name),
            trains_dense=False,
            option_names=_option_names_of(_name),
        )
    )


# ---------------------------------------------------------------------- the Python API
def _result(name: str, ctx: RunContext, train: TrainSpec) -> ExperimentResult:
    p = ctx.prune
    options = dataclasses.asdict(ctx.options)
    config = spec_dict(train=train, sparsity=p.sparsity, allocation=p.allocation, **options)
    return ctx.result(name, config)


def rigl(
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
    prune = PruneSpec(sparsity=sparsity, allocation=allocation, targets=targets)
    options = RigLOptions(delta_t, alpha, t_end_fraction)
    ctx = run_in_memory(
        "rigl", model, data, train, prune, options, checkpoint_dir, checkpoint_every
    )
    return _result("rigl", ctx, train)


def granet(
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
    ``t_end_fraction``) of each layer's weights. Checkpointing as for :func:`rigl`.
    """
    prune = PruneSpec(sparsity=sparsity, allocation=allocation, targets=targets)
    options = GraNetOptions(
        initial_sparsity, delta_t, regrow_fraction, start_fraction, prune_end_fraction,
        t_end_fraction,
    )  # fmt: skip
    ctx = run_in_memory(
        "granet", model, data, train, prune, options, checkpoint_dir, checkpoint_every
    )
    return _result("granet", ctx, train)
