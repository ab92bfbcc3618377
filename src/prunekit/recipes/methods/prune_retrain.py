"""Prune-retrain recipes: one-shot, iterative magnitude pruning (IMP) and budgeted IMP (BIMP).

Each is the dense stage followed by one stage per pruning phase (``phase_<j>``): prune to the
phase's target (nested in the previous masks), optionally rewind, retrain with the phase's LR
schedule. The phase's masks are saved before retraining, so a run killed mid-phase resumes with
the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.pqi import pq_index_report
from prunekit.core.schedules import BIMP, IMP, OneShot
from prunekit.data.base import DatasetBundle
from prunekit.recipes.context import RunContext
from prunekit.recipes.dense import dense_stage, rewind_state
from prunekit.recipes.executor import Stage
from prunekit.recipes.files import load_masks, save_masks
from prunekit.recipes.registry import Recipe, register_recipe, run_recipe
from prunekit.recipes.spec import (
    ExperimentResult,
    PruneSpec,
    TrainSpec,
    spec_dict,
)
from prunekit.training.lr import LRW, LRSchedule, make_retrain_schedule

__all__ = ["IMPOptions", "bimp", "imp", "one_shot", "pruning_norm_change", "retrain_lr"]


@dataclass
class IMPOptions:
    """Options of the prune-retrain recipes.

    ``phases``: prune-retrain phases (IMP, BIMP). ``rewind`` (IMP): ``"weights"`` resets the
    survivors to theta_k (k = ``rewind_iteration``) and retrains with the original schedule from
    k; ``"lr"`` keeps the weights and replays the end of the original LR schedule (Renda et al.
    2020); ``"none"`` retrains with ``retrain_schedule``. ``log_pq_index`` records the PQ Index of
    the dense model and after every phase in ``details["pq_index"]``.
    """

    phases: int = 3
    rewind: str = "none"
    rewind_iteration: int = 0
    log_pq_index: bool = False


@dataclass
class _Phase:
    target: float
    iterations: int
    schedule_name: str


def _plan(ctx: RunContext, kind: str) -> list[_Phase]:
    o: IMPOptions = ctx.options
    sparsity = ctx.prune.sparsity
    if kind == "one_shot":
        target = OneShot(sparsity).sparsity_at(1)
        return [_Phase(target, ctx.retrain_iterations(), ctx.retrain_schedule)]
    if kind == "bimp":
        budget = ctx.iterations(ctx.retrain_epochs or 0.0)
        sched = BIMP(sparsity, o.phases, budget)
        return [_Phase(t, b, "allr") for t, b in zip(sched.targets(), sched.budgets())]
    if o.rewind not in ("weights", "lr", "none"):
        raise ValueError(f"rewind: expected 'weights', 'lr' or 'none', got {o.rewind!r}")
    targets = IMP(sparsity, o.phases).targets()
    if o.rewind == "weights":
        total = ctx.original.total
        if not 0 <= o.rewind_iteration < total:
            raise ValueError(
                f"rewind_iteration: expected an iteration in [0, {total}) (below the dense "
                f"run's length), got {o.rewind_iteration}"
            )
        return [_Phase(t, total - o.rewind_iteration, "rewind_weights") for t in targets]
    name = "lrw" if o.rewind == "lr" else ctx.retrain_schedule
    return [_Phase(t, ctx.retrain_iterations(), name) for t in targets]


def pruning_norm_change(
    model: nn.Module, before: MaskSet | None, after: MaskSet
) -> tuple[float, float]:
    """``(d, s)`` for ALLR: relative norm removed by pruning and fraction pruned in this phase.

    ``d = ||theta - prune(theta)||_2 / ||theta||_2`` over the masked tensors, ``s`` = weights
    removed in this phase / weights present before it.
    """
    import math

    import torch

    params = dict(model.named_parameters())
    total_sq, removed_sq = 0.0, 0.0
    kept_before, kept_after = 0, 0
    with torch.no_grad():
        for name, mask in after.items():
            w = params[name].detach()
            mask = mask.to(w.device)  # masks may sit elsewhere (e.g. on the CPU): once a phase
            if before is not None and name in before:
                w = w * before[name].to(w.device)
                kept_before += int(before[name].sum())
            else:
                kept_before += mask.numel()
            kept_after += int(mask.sum())
            total_sq += float(w.double().pow(2).sum())
            removed_sq += float((w * ~mask).double().pow(2).sum())
    d = math.sqrt(removed_sq / total_sq) if total_sq > 0 else 0.0
    s = (kept_before - kept_after) / kept_before if kept_before else 0.0
    return d, s


def retrain_lr(
    ctx: RunContext, name: str, iterations: int, before: MaskSet | None, after: MaskSet
) -> LRSchedule:
    """The retraining schedule ``name`` of ``iterations`` steps, derived from the dense run's.

    ALLR reads the pruning step ``before`` -> ``after`` on ``ctx.model``, which must still hold
    the weights from before that step (see :func:`pruning_norm_change`).
    """
    if name.lower() == "allr":
        d, s = pruning_norm_change(ctx.model, before, after)
        return make_retrain_schedule(
            "allr", ctx.original, iterations, norm_change=d, pruned_fraction=max(s, 1e-12)
        )
    return make_retrain_schedule(name, ctx.original, iterations)


def _schedule(
    ctx: RunContext, phase: _Phase, before: MaskSet | None, after: MaskSet
) -> LRSchedule | None:
    if phase.iterations <= 0:
        return None
    if phase.schedule_name in ("rewind_weights", "lrw"):
        return LRW(ctx.original, phase.iterations)
    return retrain_lr(ctx, phase.schedule_name, phase.iterations, before, after)


def _pq_entry(ctx: RunContext, phase: int, metrics: dict[str, float]) -> dict[str, Any]:
    report = pq_index_report(ctx.model, ctx.masks, targets=ctx.prune.targets)
    return {
        "phase": phase,
        "sparsity": ctx.masks.sparsity if ctx.masks is not None else 0.0,
        "global": report.global_index,
        "layers": dict(report.layers),
        **{k: v for k, v in metrics.items() if k.endswith("top1") or k.endswith("loss")},
    }


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in ("test_top1", "test_loss", "test_perplexity") if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def _phase_stage(j: int, phase: _Phase) -> Stage:
    def run(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
        seed = ctx.train.seed
        before = ctx.masks
        record: dict[str, Any] = {}
        if ctx.options.log_pq_index and j == 1:
            record["pq_dense"] = _pq_entry(ctx, 0, ctx.dense["metrics"])
        masks_file = None if directory is None else directory / "masks.safetensors"
        if masks_file is not None and masks_file.is_file():  # killed while retraining
            new = load_masks(masks_file, ctx.model)
        else:
            new = ctx.compute_masks(ctx.model, phase.target, before, seed + j)
            if masks_file is not None:
                save_masks(new, masks_file)
        schedule = _schedule(ctx, phase, before, new)
        if phase.schedule_name == "rewind_weights":
            ctx.model.load_state_dict(rewind_state(ctx, ctx.options.rewind_iteration))
        new.apply(ctx.model)
        ctx.masks = new
        pruned = ctx.metrics()
        ctx.log(
            f"phase {j}: pruned to {new.sparsity:.4f} ({_fmt(pruned)}); retraining "
            f"{phase.iterations} iterations ({phase.schedule_name})"
        )
        lr0 = 0.0
        if schedule is not None:
            ckpt = None if directory is None else directory / "ckpt"
            ctx.fit(schedule, phase.iterations, new, seed + 1000 * j, ckpt)
            lr0 = float(getattr(schedule, "eta0", schedule.lr_at(0)))
        record.update(
            {
                "phase": j,
                "target_sparsity": phase.target,
                "sparsity": new.sparsity,
                "retrain_schedule": phase.schedule_name,
                "retrain_iterations": phase.iterations,
                "lr0": lr0,
                "pruned": pruned,
                "retrained": ctx.metrics(),
            }
        )
        if ctx.options.log_pq_index:
            record["pq_index"] = _pq_entry(ctx, j, record["retrained"])
        return record

    def apply(ctx: RunContext, record: dict[str, Any]) -> None:
        record = dict(record)
        pq = [record.pop(k) for k in ("pq_dense", "pq_index") if k in record]
        if pq:
            ctx.extra.setdefault("details", {}).setdefault("pq_index", []).extend(pq)
        ctx.phases.append(record)
        ctx.log(f"phase {j}: retrained ({_fmt(record['retrained'])})")

    return Stage(f"phase_{j}", run, apply, done_file="phase.json")


def _stages_of(kind: str):
    def stages(ctx: RunContext) -> list[Stage]:
        plan = _plan(ctx, kind)  # option errors surface before any training
        return [dense_stage(), *(_phase_stage(j, ph) for j, ph in enumerate(plan, start=1))]

    return stages


def _configure(cfg: Any) -> IMPOptions:
    p = cfg.prune
    return IMPOptions(phases=p.phases, rewind=p.rewind, rewind_iteration=p.rewind_iteration)


register_recipe(
    Recipe(
        "one_shot",
        "Prune the dense model once to the final sparsity, then retrain.",
        _configure,
        _stages_of("one_shot"),
        prunes_once=True,
    )
)
register_recipe(
    Recipe(
        "imp",
        "Iterative magnitude pruning: prune-retrain phases (optionally rewinding).",
        _configure,
        _stages_of("imp"),
    )
)
register_recipe(
    Recipe(
        "bimp",
        "Budgeted IMP: linear-decay dense training, retraining split over the phases.",
        _configure,
        _stages_of("bimp"),
        dense_lr_schedule="linear",
    )
)


# ---------------------------------------------------------------------- the Python API
def one_shot(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    retrain_epochs: float = 1.0,
    retrain_schedule: str = "llr",
    pretrained: bool = False,
) -> ExperimentResult:
    """Train (unless ``pretrained``), prune once to ``prune.sparsity``, retrain."""
    ctx = run_recipe(
        "one_shot",
        model,
        data,
        train,
        prune,
        IMPOptions(phases=1),
        retrain_epochs=retrain_epochs,
        retrain_schedule=retrain_schedule,
        pretrained=pretrained,
    )
    config = spec_dict(
        train=train, prune=prune, retrain_epochs=retrain_epochs, retrain_schedule=retrain_schedule
    )
    return ctx.result("one_shot", config)


def imp(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    phases: int = 3,
    rewind: str = "weights",
    rewind_iteration: int = 0,
    retrain_epochs: float | None = None,
    retrain_schedule: str = "ft",
    pretrained: bool = False,
    rewind_state: dict[str, Tensor] | None = None,
    log_pq_index: bool = False,
) -> ExperimentResult:
    """Iterative magnitude pruning over ``phases`` phases to ``prune.sparsity``.

    Args:
        rewind: ``"weights"``: after each pruning step the survivors are reset to theta_k (k =
            ``rewind_iteration``, 0 = initialisation, as in the lottery ticket experiments) and
            retrained with the original schedule from iteration k; ``"lr"``: weights are kept
            and the last ``retrain_epochs`` of the original LR schedule are replayed (Renda et al.
            2020); ``"none"``: keep weights and retrain with ``retrain_schedule``.
        rewind_iteration: k, in iterations of the dense run.
        retrain_epochs: retraining length per phase for ``"lr"`` / ``"none"`` (default: the
            length of the dense run).
        rewind_state: theta_k when ``pretrained`` (a state_dict to rewind to).
        log_pq_index: record the PQ Index (per layer and global) of the dense model and of the
            retrained model after every phase in ``result.details["pq_index"]``.

    The result's ``rewind_state`` holds theta_k for weight rewinding.
    """
    if rewind not in ("weights", "lr", "none"):
        raise ValueError(f"rewind: expected 'weights', 'lr' or 'none', got {rewind!r}")
    if rewind == "weights" and pretrained and rewind_state is None:
        raise ValueError("rewind_state: weight rewinding of a pretrained model needs theta_k")
    options = IMPOptions(phases, rewind, rewind_iteration, log_pq_index)
    memory = {"rewind": rewind_state} if rewind_state is not None else {}
    ctx = run_recipe(
        "imp",
        model,
        data,
        train,
        prune,
        options,
        retrain_epochs=retrain_epochs,
        retrain_schedule=retrain_schedule,
        pretrained=pretrained,
        memory=memory,
    )
    config = spec_dict(
        train=train,
        prune=prune,
        phases=phases,
        rewind=rewind,
        rewind_iteration=rewind_iteration,
        retrain_epochs=retrain_epochs,
        retrain_schedule=retrain_schedule,
    )
    result = ctx.result("imp", config)
    if rewind == "weights":
        result.rewind_state = _rewound(ctx, rewind_iteration)
    return result


def _rewound(ctx: RunContext, k: int) -> dict[str, Tensor] | None:
    from prunekit.recipes.dense import rewind_state as _state

    return _state(ctx, k)


def bimp(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    prune: PruneSpec,
    *,
    phases: int = 3,
    retrain_epochs: float = 3.0,
    pretrained: bool = False,
) -> ExperimentResult:
    """Budgeted IMP: linear-decay dense training, then ``phases`` phases sharing ``retrain_epochs``.

    The budget is split evenly over the phases (remainder to the last) and each phase is
    retrained with ALLR. ``train.lr_schedule`` is replaced by ``"linear"`` for the dense run.
    """
    import dataclasses

    ctx = run_recipe(
        "bimp",
        model,
        data,
        train,
        prune,
        IMPOptions(phases=phases),
        retrain_epochs=retrain_epochs,
        retrain_schedule="allr",
        pretrained=pretrained,
    )
    spec = dataclasses.replace(train, lr_schedule="linear")
    config = spec_dict(train=spec, prune=prune, phases=phases, retrain_epochs=retrain_epochs)
    return ctx.result("bimp", config)
