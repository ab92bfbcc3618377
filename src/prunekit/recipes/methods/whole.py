"""SAP and Stochastic Frank-Wolfe as run stages.

Each runs its whole recipe function (:mod:`prunekit.training`) in one stage, ``<run>/recipe``.
SFW resumes inside the recipe from that directory (Trainer checkpoints); SAP reruns its rounds
when interrupted. SAP prunes the shared dense model; SFW trains from the initialisation in its
constraint set.
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


def _fn(name: str) -> Any:
    if name == "sfw":
        from prunekit.training.sfw_recipe import run_sfw

        return run_sfw
    from prunekit.training.dst_recipes import run_sap

    return run_sap


def _option_names(name: str):
    def names() -> list[str]:
        return [n for n in inspect.signature(_fn(name)).parameters if n not in _SET]

    return names


def _retrain_epochs(ctx: RunContext) -> float:
    # null retraining length: the dense run's
    return ctx.train.epochs if ctx.retrain_epochs is None else ctx.retrain_epochs


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


def _sfw_call(ctx: RunContext, sdir: Path | None) -> Any:
    from prunekit.training.sfw_recipe import SFWSpec

    options = dict(ctx.options)
    fields = options.pop("sfw", {})
    sfw = None if fields is None else SFWSpec(**fields, targets=ctx.prune.targets)
    compress = options.get("compress", "magnitude")
    if "levels" not in options and compress != "low_rank":
        options["levels"] = [ctx.prune.sparsity]  # one level: the config's sparsity
    return _fn("sfw")(
        ctx.model,
        ctx.data,
        ctx.train,
        sfw,
        allocation=ctx.prune.allocation,
        retrain_epochs=_retrain_epochs(ctx),
        retrain_schedule=ctx.retrain_schedule,
        out_dir=sdir,
        checkpoint_every=ctx.train.checkpoint_every,
        **options,
    )


def _sfw_final_model(ctx: RunContext, result: Any) -> MaskSet:
    """The trained model compressed at the last level (masks; BatchNorm recalibrated as the
    recipe does). Low-rank levels change the architecture: the model stays uncompressed."""
    from prunekit.training.sfw_recipe import _bn_batches
    from prunekit.training.soups import recalibrate_batchnorm

    if result.masks is None:
        return MaskSet()
    model = ctx.model
    masks = result.masks.to(next(model.parameters()).device)
    masks.apply(model)
    options = dict(ctx.options)
    if options.get("recalibrate_bn", True):
        count = int(options.get("bn_batches", 8))
        batches = _bn_batches(model, ctx.data, ctx.train.batch_size, count)
        if batches:
            recalibrate_batchnorm(model, batches, device=next(model.parameters()).device)
    return masks


def _sfw_levels(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report entry per compression level (low_rank: sparsity = parameters removed).

    ``saved`` marks the level of the saved model (the last one; none for low_rank)."""
    out = []
    for i, ph in enumerate(phases):
        level = float(ph["target_sparsity"])
        if ph.get("compress") == "low_rank":
            level = max(0.0, 1.0 - float(ph.get("params_ratio", 1.0)))
        out.append(
            {
                "level": float(ph["target_sparsity"]),
                "target_sparsity": round(level, 6),
                "sparsity": ph["sparsity"],
                "final": ph["retrained"] or ph["pruned"],
                "saved": i == len(phases) - 1 and ph.get("compress") != "low_rank",
            }
        )
    return out


_CALLS = {"sap": _run_sap, "sfw": _sfw_call}


def _stage(name: str) -> Stage:
    def run(ctx: RunContext, sdir: Path | None) -> dict[str, Any]:
        ctx.log(f"{name}: running the recipe" + (f" in {sdir}" if sdir else ""))
        result = _CALLS[name](ctx, sdir)
        phases = [dataclasses.asdict(ph) for ph in result.phases]
        extra: dict[str, Any] = {"final": result.final}
        if result.details:
            extra["details"] = result.details
        if name == "sfw":
            extra["trained"] = result.dense  # the SFW-trained model before compression
            extra["levels"] = _sfw_levels(phases)
            extra["iterations"] = {"dense": result.dense_iterations,
                                   "retrain": result.retrain_iterations}  # fmt: skip
            extra["max_norm_ratio"] = result.config.get("max_norm_ratio")
            ctx.masks = _sfw_final_model(ctx, result)
        else:
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
        return dict(cfg.prune.options)

    return configure


def _stages(name: str):
    def stages(ctx: RunContext) -> list[Stage]:
        if name == "sfw":
            return [_stage(name)]
        return [dense_stage(), _stage(name)]

    return stages


def _sfw_ignores_sparsity(options: dict[str, Any]) -> bool:
    return "levels" in options or options.get("compress") == "low_rank"


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
register_recipe(
    Recipe(
        "sfw",
        "Stochastic Frank-Wolfe training in a constraint set, then compression.",
        _configure("sfw"),
        _stages("sfw"),
        trains_dense=False,
        option_names=_option_names("sfw"),
        ignores_sparsity=_sfw_ignores_sparsity,
    )
)
