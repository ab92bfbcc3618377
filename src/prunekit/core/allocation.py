"""How much of each layer is pruned: global, uniform, uniform+, ERK, LAMP, min-keep, per-row, N:M.

Every allocation turns scores into boolean keep-masks (True = kept) with exact counts. Allocations
that fix a budget per layer first compute ``plan`` (entries to prune per layer), so the plan can be
shown before anything is pruned.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prunekit.core.registry import Registry
from prunekit.core.scores import Scores, TensorScores
from prunekit.core.selection import NonFiniteScoreError, keep_masks_lowest_pruned

_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass
class AllocationContext:
    """What an allocation sees: the targets' scores, the target sparsity and any earlier masks."""

    scores: Scores
    sparsity: float | None
    existing: Mapping[str, Tensor] = field(default_factory=dict)
    min_keep: int | float | None = None
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return self.scores.names()

    def numel(self, name: str) -> int:
        return self.scores.numel(name)

    def already_pruned(self, name: str) -> int:
        mask = self.existing.get(name)
        return 0 if mask is None else mask.numel() - int(torch.count_nonzero(mask))


AllocationFn = Callable[[AllocationContext], dict[str, Tensor]]
ALLOCATIONS: Registry[AllocationFn] = Registry("allocation")


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4) (keep N of every M); None when ``pattern`` is not of that form."""
    match = _NM_PATTERN.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def validate_allocation(allocation: str) -> str:
    """Check an allocation name (or an ``N:M`` pattern); returns it normalised."""
    nm = parse_nm(allocation)
    if nm is not None:
        n, m = nm
        if m < 1 or not 1 <= n < m:
            raise ValueError(
                f"allocation: N:M pattern {allocation!r} needs 1 <= N < M (N kept of every M), "
                f"got N={n}, M={m}"
            )
        return f"{n}:{m}"
    ALLOCATIONS.get(allocation, argument="allocation")
    return allocation.lower()


def allocate(allocation: str, context: AllocationContext) -> dict[str, Tensor]:
    """Run a registered allocation (or an ``N:M`` pattern) and return keep-masks.

    No allocation silently empties a layer: per-layer budgets (uniform, uniform_plus, erk,
    per_row) keep at least one weight per layer (per row for per_row); ``global_min_keep`` and
    ``lamp`` keep at least one per layer and raise when the target is out of reach; N:M keeps N
    of every M. ``global`` (one threshold, no minimum) raises a ``ValueError`` when it would empty
    every target layer, and warns (:class:`LayerCollapseWarning`, naming the layers) when it
    empties some: that layer collapse is the known behaviour of a global threshold, which
    ``global_min_keep`` or ``min_keep`` avoid.
    """
    key = validate_allocation(allocation)
    nm = parse_nm(key)
    if nm is not None:
        return nm_masks(context, *nm)
    masks = ALLOCATIONS.get(key)(context)
    _refuse_emptied(key, context, masks)
    return masks


def _refuse_emptied(
    allocation: str, context: AllocationContext, masks: Mapping[str, Tensor]
) -> None:
    emptied = [
        n
        for n, m in masks.items()
        if m.numel() > 0
        and not bool(m.any())
        and (n not in context.existing or bool(context.existing[n].any()))
    ]
    if not emptied:
        return
    total = sum(m.numel() for m in masks.values())
    if len(emptied) == len(masks):
        raise ValueError(
            f"sparsity: {context.sparsity} with allocation {allocation!r} would prune every "
            f"target weight ({total} in {len(masks)} layers); lower the sparsity, or keep a "
            "minimum per layer with allocation 'global_min_keep' or min_keep"
        )
    names = ", ".join(repr(n) for n in emptied[:5]) + (" ..." if len(emptied) > 5 else "")
    warnings.warn(
        f"sparsity {context.sparsity} with allocation {allocation!r} prunes {len(emptied)} "
        f"layer(s) entirely: {names}; use allocation 'global_min_keep' or min_keep to keep a "
        "minimum per layer",
        LayerCollapseWarning,
        stacklevel=3,
    )


class LayerCollapseWarning(UserWarning):
    """A global threshold pruned every weight of some (not all) target layers."""


def list_allocations() -> list[str]:
    """Names of the registered allocations; any ``N:M`` pattern (e.g. ``2:4``) works too."""
    return ALLOCATIONS.names() + ["N:M"]


# --------------------------------------------------------------------------- per-layer budgets


def largest_remainder(
    quotas: Mapping[str, float], total: int, caps: Mapping[str, int]
) -> dict[str, int]:
    """Round per-layer quotas to integers that sum to ``total``, each within [0, cap]."""
    counts = {n: min(caps[n], max(0, math.floor(q))) for n, q in quotas.items()}
    short = total - sum(counts.values())
    order = sorted(
        quotas, key=lambda n: (-(quotas[n] - math.floor(quotas[n])), list(quotas).index(n))
    )
    while short > 0:
        progressed = False
        for n in order:
            if short == 0:
                break
            if counts[n] < caps[n]:
                counts[n] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    return counts


def budget_masks(context: AllocationContext, plan: Mapping[str, int]) -> dict[str, Tensor]:
    """Prune exactly ``plan[name]`` lowest scores in each layer (never fewer than already pruned)."""
    masks: dict[str, Tensor] = {}
    for name in context.names:
        k = max(plan[name], context.already_pruned(name))
        masks.update(
            keep_masks_lowest_pruned(context.scores, [name], k, context.existing, seed=context.seed)
        )
    return masks


def _leave_one(count: int, numel: int) -> int:
    """Per-layer budgets never prune a whole layer: rounding ``s * numel`` up to ``numel`` (e.g.
    s = 0.999999 on a small layer) prunes one fewer, keeping the documented minimum of one."""
    return min(count, numel - 1) if numel > 0 else 0


def _require_sparsity(context: AllocationContext, allocation: str) -> float:
    if context.sparsity is None:
        raise ValueError(f"sparsity: allocation {allocation!r} needs a target sparsity in [0, 1)")
    return context.sparsity


def uniform_plan(context: AllocationContext) -> dict[str, int]:
    s = _require_sparsity(context, "uniform")
    return {n: _leave_one(round(s * context.numel(n)), context.numel(n)) for n in context.names}


def uniform_plus_plan(context: AllocationContext, last_max: float = 0.8) -> dict[str, int]:
    """First layer dense, last layer at most ``last_max`` sparse, the rest uniform at s'."""
    s = _require_sparsity(context, "uniform_plus")
    names = context.names
    if len(names) < 2:
        raise ValueError(
            "allocation: 'uniform_plus' keeps the first layer dense and needs at least two target layers"
        )
    sizes = {n: context.numel(n) for n in names}
    total = sum(sizes.values())
    first, last, middle = names[0], names[-1], names[1:-1]
    middle_size = sum(sizes[n] for n in middle)
    wanted = s * total
    s_rest = wanted / (middle_size + sizes[last])
    last_s = s_rest
    if s_rest > last_max:
        last_s = last_max
        s_rest = (wanted - last_max * sizes[last]) / middle_size if middle_size else math.inf
    if s_rest > 1:
        reachable = (middle_size + last_max * sizes[last]) / total
        raise ValueError(
            f"sparsity: {s} is out of reach for 'uniform_plus' on this model (at most {reachable:.4f} "
            f"with the first layer dense and the last at most {last_max:.0%} sparse)"
        )
    quotas = {first: 0.0, last: last_s * sizes[last]}
    quotas.update({n: s_rest * sizes[n] for n in middle})
    quotas = {n: quotas[n] for n in names}
    caps = {first: 0, last: math.floor(last_max * sizes[last])}
    caps.update({n: _leave_one(sizes[n], sizes[n]) for n in middle})
    caps[last] = _leave_one(caps[last], sizes[last])
    return largest_remainder(quotas, round(wanted), caps)


def erk_densities(shapes: Mapping[str, torch.Size], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities: d_l = eps * sum(shape) / prod(shape), solved for the total.

    Layers whose density would exceed 1 are made dense and eps is solved again.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[n] for n in dense)
        weight = sum(raw[n] * sizes[n] for n in sizes if n not in dense)
        eps = budget / weight if weight > 0 else 0.0
        over = {n for n in sizes if n not in dense and eps * raw[n] > 1}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in sizes}
        dense |= over


def erk_plan(context: AllocationContext) -> dict[str, int]:
    s = _require_sparsity(context, "erk")
    shapes = {n: context.scores.shape(n) for n in context.names}
    densities = erk_densities(shapes, 1.0 - s)
    sizes = {n: context.numel(n) for n in context.names}
    quotas = {n: (1.0 - densities[n]) * sizes[n] for n in context.names}
    caps = {n: _leave_one(size, size) for n, size in sizes.items()}
    return largest_remainder(quotas, round(s * sum(sizes.values())), caps)


@ALLOCATIONS.register("uniform")
def uniform(context: AllocationContext) -> dict[str, Tensor]:
    """Each layer pruned to the target sparsity by its own threshold."""
    return budget_masks(context, uniform_plan(context))


@ALLOCATIONS.register("uniform_plus")
def uniform_plus(context: AllocationContext) -> dict[str, Tensor]:
    """Uniform+ (Gale et al. 2019): first layer dense, last at most 80% sparse, the rest uniform."""
    return budget_masks(context, uniform_plus_plan(context))


@ALLOCATIONS.register("erk")
def erk(context: AllocationContext) -> dict[str, Tensor]:
    """Erdős–Rényi-Kernel layer densities (RigL), scaled so the total is exact."""
    return budget_masks(context, erk_plan(context))


# --------------------------------------------------------------------------- global thresholds


def _global_k(context: AllocationContext, allocation: str) -> int:
    s = _require_sparsity(context, allocation)
    return round(s * sum(context.numel(n) for n in context.names))


def resolve_min_keep(min_keep: int | float | None, numel: int) -> int:
    """``min_keep`` for one layer of ``numel`` weights: an int is a count; a float in (0, 1) is a
    fraction of the layer, rounded up so that a positive fraction always keeps at least one."""
    if min_keep is None:
        return 0
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)):
        raise TypeError(f"min_keep: expected an int count or a float fraction, got {min_keep!r}")
    if isinstance(min_keep, float):
        if not 0.0 <= min_keep < 1.0:
            raise ValueError(f"min_keep: a fraction must be in [0, 1), got {min_keep}")
        return min(numel, math.ceil(min_keep * numel))
    if min_keep < 0:
        raise ValueError(f"min_keep: expected a count >= 0, got {min_keep}")
    return min(numel, min_keep)


def global_with_min_keep(
    context: AllocationContext, scores: Scores, k: int, min_keep: int | float, at_least: int = 0
) -> dict[str, Tensor]:
    """One threshold over all layers; any layer left with fewer than its minimum (``min_keep``
    resolved per layer, and at least ``at_least``) keeps its best that many instead, and the other
    layers absorb the difference."""
    names = context.names
    floor = {n: max(at_least, resolve_min_keep(min_keep, scores.numel(n))) for n in names}
    floor = {n: min(f, scores.numel(n)) for n, f in floor.items()}
    fixed: dict[str, Tensor] = {}
    while True:
        free = [n for n in names if n not in fixed]
        k_free = k - sum(m.numel() - int(torch.count_nonzero(m)) for m in fixed.values())
        capacity = sum(scores.numel(n) for n in free)
        if not free or k_free > capacity:
            raise ValueError(
                f"sparsity: {context.sparsity} is out of reach while every layer keeps at least "
                f"min_keep={min_keep} weights"
            )
        masks = keep_masks_lowest_pruned(scores, free, k_free, context.existing, seed=context.seed)
        short = [n for n in free if int(torch.count_nonzero(masks[n])) < floor[n]]
        if not short:
            masks.update(fixed)
            return {n: masks[n] for n in names}
        for n in short:
            k_layer = max(scores.numel(n) - floor[n], context.already_pruned(n))
            fixed.update(
                keep_masks_lowest_pruned(scores, [n], k_layer, context.existing, seed=context.seed)
            )


@ALLOCATIONS.register("global")
def global_(context: AllocationContext) -> dict[str, Tensor]:
    """One threshold over all target layers (optionally with ``min_keep`` per layer)."""
    k = _global_k(context, "global")
    if context.min_keep:
        resolve_min_keep(context.min_keep, 1)  # validate early
        return global_with_min_keep(context, context.scores, k, context.min_keep)
    return keep_masks_lowest_pruned(
        context.scores, context.names, k, context.existing, seed=context.seed
    )


@ALLOCATIONS.register("global_min_keep")
def global_min_keep(context: AllocationContext) -> dict[str, Tensor]:
    """Global MP's minimum threshold: every layer keeps >= min_keep (default 0.05% of each layer)."""
    k = _global_k(context, "global_min_keep")
    min_keep = 0.0005 if context.min_keep is None else context.min_keep
    return global_with_min_keep(context, context.scores, k, min_keep, at_least=1)


def lamp_scores(scores: Tensor, existing: Tensor | None = None) -> Tensor:
    """LAMP (Lee et al. 2021): score(u) = s_u^2 / sum_{v >= u} s_v^2 over the layer's sorted scores.

    The largest score of a layer maps to 1, so a global threshold never empties a layer.
    """
    flat = scores.detach().reshape(-1).double() ** 2
    if existing is not None:
        flat = flat * existing.reshape(-1)
    values, order = flat.sort(stable=True)
    suffix = values.flip(0).cumsum(0).flip(0)
    normalised = torch.where(suffix > 0, values / suffix, torch.zeros_like(values))
    out = torch.empty_like(normalised)
    out[order] = normalised
    return out.reshape(scores.shape)


@ALLOCATIONS.register("lamp")
def lamp(context: AllocationContext) -> dict[str, Tensor]:
    """Layer-adaptive magnitude pruning: layer-normalised scores, one global threshold."""
    k = _global_k(context, "lamp")
    normalised = TensorScores(
        {
            n: lamp_scores(_finite(n, context.scores.full(n)), context.existing.get(n))
            for n in context.names
        }
    )
    return global_with_min_keep(context, normalised, k, context.min_keep or 0, at_least=1)


# --------------------------------------------------------------------------- structured patterns


def _finite(name: str, scores: Tensor) -> Tensor:
    if not torch.isfinite(scores).all():
        raise NonFiniteScoreError(name)
    return scores


def _rows(tensor: Tensor) -> Tensor:
    return tensor.reshape(tensor.shape[0], -1)


def keep_lowest_per_row(scores: Tensor, k_per_row: Tensor, existing: Tensor | None) -> Tensor:
    """Keep-mask pruning the ``k_per_row[r]`` lowest scores of each row (ties by index)."""
    rows = _rows(scores).double()
    if existing is not None:
        rows = rows.masked_fill(~_rows(existing), -math.inf)
    order = rows.sort(dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    return (rank >= k_per_row.unsqueeze(1)).reshape(scores.shape)


@ALLOCATIONS.register("per_row")
def per_row(context: AllocationContext) -> dict[str, Tensor]:
    """Each output unit (dimension 0) pruned to the target sparsity, as Wanda compares weights."""
    s = _require_sparsity(context, "per_row")
    masks = {}
    for name in context.names:
        score = context.scores.full(name)
        _finite(name, score)
        cols = score[0].numel() if score.dim() > 1 else 1
        per_row_k = _leave_one(round(s * cols), cols)
        k = torch.full((score.shape[0],), per_row_k, dtype=torch.long, device=score.device)
        existing = context.existing.get(name)
        if existing is not None:
            k = torch.maximum(k, (~_rows(existing)).sum(1))
        masks[name] = keep_lowest_per_row(score, k, existing)
    return masks


def nm_masks(context: AllocationContext, n: int, m: int) -> dict[str, Tensor]:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive inputs (dimension 1)."""
    masks = {}
    for name in context.names:
        score = context.scores.full(name)
        if score.dim() < 2 or score.shape[1] % m:
            size = score.shape[1] if score.dim() >= 2 else score.numel()
            raise ValueError(
                f"allocation: {n}:{m} needs the input size of {name!r} to be a multiple of {m}, "
                f"got {size}"
            )
        _finite(name, score)
        # Move the input dimension last so that each group is M consecutive input channels.
        moved = score.double().movedim(1, -1)
        groups = moved.reshape(-1, m)
        existing = context.existing.get(name)
        if existing is not None:
            groups = groups.masked_fill(~existing.movedim(1, -1).reshape(-1, m), -math.inf)
        order = groups.sort(dim=1, stable=True).indices
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, order[:, : m - n], False)
        if existing is not None:
            keep &= existing.movedim(1, -1).reshape(-1, m)
        masks[name] = keep.reshape(moved.shape).movedim(-1, 1).contiguous()
    return masks


def plan_counts(allocation: str, context: AllocationContext) -> dict[str, int]:
    """Entries each layer will lose; computed from scores only where the allocation needs them."""
    key = validate_allocation(allocation)
    planners = {"uniform": uniform_plan, "uniform_plus": uniform_plus_plan, "erk": erk_plan}
    if key in planners:
        return planners[key](context)
    masks = allocate(key, context)
    return {n: m.numel() - int(torch.count_nonzero(m)) for n, m in masks.items()}
