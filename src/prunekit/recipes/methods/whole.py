"""Sparse Model Soups and SAP as run stages.

Each runs its whole recipe function (:mod:`prunekit.training`) in one stage, ``<run>/recipe``.
Soups resumes inside the recipe from that directory (ingredient files, Trainer checkpoints);
SAP reruns its rounds when interrupted. Both prune the shared dense model.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from prunekit.core.masks import MaskSet
from prunekit.recipes.context import RunContext
from prunekit.recipes.dense import dense_stage
from prunekit.recipes.executor import Stage
from prunekit.recipes.registry import Recipe, register_recipe

__all__: list[str] = []

# Recipe arguments the stage sets itself from other config keys.
_SET = {
    "model",
    "data",
    "train",
    "sparsity",
    "allocation",
    "targets",
    "method",
    "checkpoint_dir",
    "checkpoint_every",
    "criterion_options",
    "num_batches",
    "criterion_batch_size",
    "retrain_epochs",
    "retrain_schedule",
    "pretrained",
    "out_dir",
}
_SET_EXTRA = {"soups": {"prune", "phases", "callbacks"}}  # fmt: skip


def _fn(name: str) -> Any:
    if name == "soups":
        from prunekit.training.soups_recipe import run_soups

        return run_soups
    from prunekit.training.dst_recipes import run_sap

    return run_sap


def _option_names(name: str):
    def names() -> list[str]:
        skip = _SET | _SET_EXTRA.get(name, set())
        return [n for n in inspect.signature(_fn(name)).parameters if n not in skip]

    return names


def _retrain_epochs(ctx: RunContext) -> float:
    # null retraining length: the dense run's
    return ctx.train.epochs if ctx.retrain_epochs is None else ctx.retrain_epochs


def _run_soups(ctx: RunContext, sdir: Path | None) -> Any:
    options = dict(ctx.options)
    phases = options.pop("phases")
    return _fn("soups")(
        ctx.model,
        ctx.data,
        ctx.train,
        ctx.prune,
        phases=phases,
        retrain_epochs=_retrain_epochs(ctx),
        retrain_schedule=ctx.retrain_schedule,
        out_dir=sdir,
        pretrained=True,
        checkpoint_every=ctx.train.checkpoint_every,
        **options,
    )


def _run_sap(ctx: RunContext, sdir: Path | None) -> Any:
    return _fn("sap")(
        ctx.model,
        ctx.data,
        ctx.train,
        targets=ctx.prune.targets,
        retrain_epochs=ctx.retrain_epochs,
        retrain_schedule=ctx.retrain_schedule,
        pretrained=True,
        **dict(ctx.options),
    )


_CALLS = {"soups": _run_soups, "sap": _run_sap}


def _stage(name: str) -> Stage:
    def run(ctx: RunContext, sdir: Path | None) -> dict[str, Any]:
        ctx.log(f"{name}: running the recipe" + (f" in {sdir}" if sdir else ""))
        result = _CALLS[name](ctx, sdir)
        phases = [dataclasses.asdict(ph) for ph in result.phases]
        extra: dict[str, Any] = {"final": result.final}
        if result.details:
            extra["details"] = result.details
        masks = result.masks if result.masks is not None else MaskSet.from_model(ctx.model)
        ctx.masks = masks
        if name == "sap":
            # SAP picks its own sparsity: the report lists it where it landed (0.1 % steps)
            extra["target_sparsity"] = round(ctx.masks.sparsity, 3)
        return {"phases": phases, "extra": extra}

    def apply(ctx: RunContext, record: dict[str, Any]) -> None:
        ctx.phases.extend(record["phases"])
        ctx.extra.update(record["extra"])

    return Stage("recipe", run, apply, cleanup=("train", "dense"))


def _configure(name: str):
    def configure(cfg: Any) -> dict[str, Any]:
        options = dict(cfg.prune.options)
        if name == "soups":
            options["phases"] = cfg.prune.phases
        return options

    return configure


def _soups_validate(section: Any, path: str) -> None:
    """Soups prunes copies of one model with a data-free criterion without options."""
    from prunekit.criteria import create_criterion
    from prunekit.experiments.typed import ConfigError

    if section.criterion_options or create_criterion(section.criterion).requires_data:
        key = f"{path}.criterion" if path else "criterion"
        raise ConfigError(
            f"{key}: schedule 'soups' prunes with a data-free "
            f"criterion without options (e.g. magnitude), got {section.criterion!r}"
        )


def _stages(name: str):
    def stages(ctx: RunContext) -> list[Stage]:
        return [dense_stage(), _stage(name)]

    return stages


register_recipe(
    Recipe(
        "soups",
        "Sparse Model Soups: average retrained copies of one pruned model per phase.",
        _configure("soups"),
        _stages("soups"),
        option_names=_option_names("soups"),
        validate=_soups_validate,
    )
)
register_recipe(
    Recipe(
        "sap",
        "Sparsity-aware pruning rounds sized by the PQ Index.",
        _configure("sap"),
        _stages("sap"),
        option_names=_option_names("sap"),
        ignores_sparsity=lambda options: True,
    )
)
