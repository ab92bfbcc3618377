"""Dynamic sparse training (RigL, GraNet) and pruning at initialisation as run stages.

Each is one training run from the initialisation (stage ``phase_1``, no dense model); the
recipe functions of :mod:`prunekit.training.dst_recipes` do the work, checkpointing in the
stage's directory so that a killed run resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prunekit.core.masks import MaskSet
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage
from prunekit.recipes.registry import Recipe, register_recipe

__all__: list[str] = []

# Recipe arguments the stage sets itself from other config keys.
_SET = {"model", "data", "train", "sparsity", "allocation", "targets", "method",
        "checkpoint_dir", "checkpoint_every", "criterion_options", "num_batches",
        "criterion_batch_size"}  # fmt: skip


def _fn(name: str) -> Any:
    from prunekit.training import dst_recipes

    return getattr(dst_recipes, f"run_{name}")


def _option_names(name: str):
    def names() -> list[str]:
        import inspect

        return [n for n in inspect.signature(_fn(name)).parameters if n not in _SET]

    return names


def _stage(name: str) -> Stage:
    def run(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
        p = ctx.prune
        common: dict[str, Any] = {
            "targets": p.targets,
            "checkpoint_dir": None if directory is None else directory / "ckpt",
            "checkpoint_every": ctx.train.checkpoint_every,
        }
        ctx.log(f"{name}: training {ctx.original.total} iterations at sparsity {p.sparsity}")
        if name == "at_init":
            result = _fn(name)(
                ctx.model,
                ctx.data,
                ctx.train,
                p.method,
                p.sparsity,
                allocation=p.allocation,
                num_batches=p.calibration_batches,
                criterion_batch_size=p.calibration_batch_size,
                criterion_options=p.criterion_options,
                **common,
            )
        else:
            result = _fn(name)(
                ctx.model,
                ctx.data,
                ctx.train,
                sparsity=p.sparsity,
                allocation=p.allocation,
                **common,
                **dict(ctx.options or {}),
            )
        ctx.masks = result.masks if result.masks is not None else MaskSet.from_model(ctx.model)
        return dataclasses.asdict(result.phases[-1])

    def apply(ctx: RunContext, record: dict[str, Any]) -> None:
        ctx.phases.append(record)

    return Stage("phase_1", run, apply, done_file="phase.json")


def _configure(cfg: Any) -> dict[str, Any]:
    return dict(cfg.prune.options)


for _name, _doc, _once in (
    ("rigl", "RigL dynamic sparse training: drop by magnitude, grow by gradient.", False),
    ("granet", "GraNet: gradual pruning plus RigL-style regrowth during training.", False),
    ("at_init", "Prune the untrained model (e.g. snip, grasp, synflow), then train it sparse.",
     True),
):  # fmt: skip
    register_recipe(
        Recipe(
            _name,
            _doc,
            _configure,
            lambda ctx, _n=_name: [_stage(_n)],
            trains_dense=False,
            option_names=_option_names(_name) if _name != "at_init" else (lambda: []),
            prunes_once=_once,
        )
    )
