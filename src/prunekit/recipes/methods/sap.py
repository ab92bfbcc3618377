"""SAP (Diao et al. 2023): rounds of magnitude pruning sized by the PQ Index, each retrained.

The dense stage, then one stage per round (``round_<r>``): measure the PQ Index, prune
``c = floor(d * clamp(gamma * (1 - r/d), 0, beta))`` of the d kept weights (one global amount
and threshold, or per layer with ``scope="layer"``), retrain with the named retraining
schedule. A round's masks are a function of the weights it starts from, so a round killed
while retraining recomputes them and the Trainer continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.pqi import SAPSchedule, pq_index_report
from prunekit.core.targets import Targets, select_targets
from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext
from prunekit.recipes.dense import dense_stage
from prunekit.recipes.executor import Stage
from prunekit.recipes.methods.prune_retrain import retrain_lr
from prunekit.recipes.registry import Recipe, register_recipe, run_recipe
from prunekit.recipes.spec import ExperimentResult, PruneSpec, TrainSpec, spec_dict

__all__ = ["SAPOptions", "sap"]


@dataclass
class SAPOptions:
    """``rounds`` of SAP; ``scope`` ``"global"`` or ``"layer"``; ``p``, ``q``, ``eta_r``,
    ``gamma``, ``beta``: SAP's hyper-parameters (defaults from the paper)."""

    rounds: int = 5
    scope: str = "global"
    p: float = 0.5
    q: float = 1.0
    eta_r: float = 0.001
    gamma: float = 1.2
    beta: float = 0.9


def _schedule(ctx: RunContext) -> SAPSchedule:
    o: SAPOptions = ctx.options
    return SAPSchedule(
        scope=o.scope, p=o.p, q=o.q, eta_r=o.eta_r, gamma=o.gamma, beta=o.beta,
        targets=ctx.prune.targets,
    )  # fmt: skip


def _all_kept(ctx: RunContext) -> MaskSet:
    params = select_targets(ctx.model, ctx.prune.targets)
    return MaskSet({n: torch.ones_like(w, dtype=torch.bool) for n, w in params.items()})


def _prune(ctx: RunContext, sap: SAPSchedule, masks: MaskSet, its: int) -> tuple[MaskSet, Any]:
    """One SAP pruning step on ``ctx.model``; the retraining LR schedule (None: no retraining)."""
    if its <= 0:
        return sap.prune_round(ctx.model, masks), None
    params = dict(ctx.model.named_parameters())
    # ALLR reads the weights before pruning: keep a copy of the targets only for it
    allr = ctx.retrain_schedule.lower() == "allr"
    saved = {n: params[n].detach().clone() for n in masks} if allr else None
    new = sap.prune_round(ctx.model, masks)
    if saved is not None:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
    schedule = retrain_lr(ctx, ctx.retrain_schedule, its, masks, new)
    new.apply(ctx.model)
    return new, schedule


def _round_stage(r: int) -> Stage:
    def run(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
        o: SAPOptions = ctx.options
        pq = {"p": o.p, "q": o.q}
        sap = _schedule(ctx)
        masks = ctx.masks if ctx.masks is not None else _all_kept(ctx)
        before = pq_index_report(ctx.model, masks, **pq)
        plan = sap.plan(ctx.model, masks)
        its = ctx.retrain_iterations()
        ctx.masks, schedule = _prune(ctx, sap, masks, its)
        pruned = ctx.metrics()
        ctx.log(
            f"round {r}: PQ Index {before.global_index:.4f}, pruned to "
            f"{ctx.masks.sparsity:.4f}; retraining {its} iterations ({ctx.retrain_schedule})"
        )
        if schedule is not None:
            ckpt = None if directory is None else directory / "ckpt"
            ctx.fit(schedule, its, ctx.masks, ctx.train.seed + 1000 * r, ckpt)
        retrained = ctx.metrics()
        after = pq_index_report(ctx.model, ctx.masks, **pq)
        lr0 = 0.0 if schedule is None else float(getattr(schedule, "eta0", schedule.lr_at(0)))
        sparsity = ctx.masks.sparsity
        record: dict[str, Any] = {
            "phase": {
                "phase": r,
                "target_sparsity": sparsity,
                "sparsity": sparsity,
                "retrain_schedule": ctx.retrain_schedule,
                "retrain_iterations": its,
                "lr0": lr0,
                "pruned": pruned,
                "retrained": retrained,
            },
            "round": {
                "round": r,
                "kept": {k: a.kept for k, a in plan.items()},
                "pq_index": before.global_index,
                "layer_pq_index": dict(before.layers),
                "keep_bound": {k: a.keep_bound for k, a in plan.items()},
                "prune": {k: a.prune for k, a in plan.items()},
                "sparsity": sparsity,
                "layer_sparsity": ctx.masks.layer_sparsity(),
                "pq_index_retrained": after.global_index,
                "layer_pq_index_retrained": dict(after.layers),
            },
        }
        if r == 1:  # round 1 starts from the dense model
            record["dense_pq_index"] = before.to_dict()
        return record

    def apply(ctx: RunContext, record: dict[str, Any]) -> None:
        details = ctx.extra.setdefault("details", {})
        if "dense_pq_index" in record:
            details["dense_pq_index"] = record["dense_pq_index"]
        details.setdefault("rounds", []).append(record["round"])
        ctx.phases.append(record["phase"])
        # SAP picks its own sparsity: the report lists it where it landed (0.1 % steps)
        ctx.extra["target_sparsity"] = round(record["phase"]["sparsity"], 3)
        ctx.log(f"round {r}: retrained, sparsity {record['phase']['sparsity']:.4f}")

    return Stage(f"round_{r}", run, apply, done_file="round.json")


def _stages(ctx: RunContext) -> list[Stage]:
    rounds = ctx.options.rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive integer, got {rounds!r}")
    _schedule(ctx)  # option errors surface before any training
    if not select_targets(ctx.model, ctx.prune.targets):
        raise ValueError("model: no prunable parameters for SAP")
    return [dense_stage(), *(_round_stage(r) for r in range(1, rounds + 1))]


def _configure(cfg: Any) -> SAPOptions:
    return SAPOptions(**cfg.prune.options)


register_recipe(
    Recipe(
        "sap",
        "Sparsity-aware pruning rounds sized by the PQ Index.",
        _configure,
        _stages,
        option_names=lambda: [f.name for f in dataclasses.fields(SAPOptions)],
        ignores_sparsity=lambda options: True,
        label=lambda cfg: f"sap-{cfg.prune.options.get('scope', 'global')}",
    )
)


def sap(
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
    options = SAPOptions(rounds, scope, p, q, eta_r, gamma, beta)
    retrain = {"retrain_epochs": retrain_epochs, "retrain_schedule": retrain_schedule}
    prune = PruneSpec(targets=targets)
    ctx = run_recipe("sap", model, data, train, prune, options, pretrained=pretrained, **retrain)
    config = spec_dict(train=train, **dataclasses.asdict(options), **retrain)
    return ctx.result("sap", config)
