"""``prune``: trace, score, allocate and physically shrink in one call."""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.metrics import count_macs, count_params
from prunekit.criteria.registry import get_criterion
from prunekit.structured.allocation import _min_keep, allocate
from prunekit.structured.criteria import group_importance
from prunekit.structured.graph import DependencyGraph, _call, build_graph
from prunekit.structured.groups import ChannelGroup, find_groups
from prunekit.structured.latency import LayerTimer, fit_latency, torch_threads
from prunekit.structured.shrink import keep_indices, shrink

__all__ = ["GroupChange", "StructuredPlan", "StructuredPruningWarning", "plan_pruning", "prune"]


class StructuredPruningWarning(UserWarning):
    """Fewer channels or heads than asked could be removed from a group."""


# Channels that are fixed by design: the model's own inputs and outputs, and what the user ignored.
# A head_dim vector shared by all heads stays whole while the heads themselves are removed.
# Weight slices that read constant (padded) channels are not channels of their own.
_EXPECTED = (
    "model input",
    "model output",
    "`ignore`",
    "shared by all heads",
    "constant (padded) input channels",
)


def _warn_shortfall(
    groups: list[ChannelGroup],
    pruned: dict[int, Tensor],
    ratio: float | dict[str, float],
    per_group: bool,
    min_channels: int | float,
    round_to: int | None,
) -> None:
    """Warn for every group that lost fewer components than asked, naming it and the reason.

    A fixed group warns unless it is fixed by design (``_EXPECTED``) or a dict of ratios leaves
    it out; with ``per_group`` (uniform ratios) a group that lost fewer than ``floor(size *
    ratio)`` components warns too.
    """
    for gi, g in enumerate(groups):
        if not g.prunable:
            if g.reasons and not all(any(e in r for e in _EXPECTED) for r in g.reasons):
                if isinstance(ratio, dict) and g.name not in ratio:
                    continue
                why = "; ".join(r for r in g.reasons if not any(e in r for e in _EXPECTED))
                warnings.warn(
                    f"group {g.name!r} ({g.size} x {g.unit} channels) cannot be pruned: {why}",
                    StructuredPruningWarning,
                    stacklevel=3,
                )
            continue
        if not per_group:
            continue
        r = ratio.get(g.name, 0.0) if isinstance(ratio, dict) else ratio
        asked = int(math.floor(g.size * r + 1e-9))
        done = len(pruned.get(gi, ()))
        if done < asked:
            if g.size - asked < _min_keep(g, min_channels):
                why = f"min_channels={min_channels!r}"
            elif round_to and round_to > 1:
                why = f"round_to={round_to!r}"
            else:
                why = "uniform_layers=True (another layer of this kind keeps more)"
            warnings.warn(
                f"group {g.name!r}: removed {done} of the {asked} components asked "
                f"({g.unit} channels each), limited by {why}",
                StructuredPruningWarning,
                stacklevel=3,
            )


@dataclass
class GroupChange:
    """What happened to one channel group."""

    name: str
    before: int  # components (channels or heads) before
    after: int
    unit: int  # channels per component (head_dim for attention heads)
    members: list[str]


@dataclass
class StructuredPlan:
    """The record of a structured pruning run."""

    criterion: str
    ratio: float | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    changes: list[GroupChange] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    # Measured seconds per call on the latency inputs (only with ``target_latency``).
    latency_before: float | None = None
    latency_after: float | None = None

    @property
    def latency_ratio(self) -> float | None:
        """Measured latency after / before (``None`` unless pruned with ``target_latency``)."""
        if self.latency_before is None or self.latency_after is None:
            return None
        return self.latency_after / self.latency_before

    @property
    def macs_ratio(self) -> float:
        """MACs before / after (the theoretical speedup)."""
        return self.macs_before / max(1, self.macs_after)

    @property
    def params_ratio(self) -> float:
        return self.params_before / max(1, self.params_after)

    def summary(self) -> str:
        """A plain-text table of the groups that changed and the totals."""
        lines = [f"{'group':40s} {'before':>8s} {'after':>8s} {'unit':>5s}"]
        for c in self.changes:
            if c.after != c.before:
                lines.append(f"{c.name:40s} {c.before:8d} {c.after:8d} {c.unit:5d}")
        lines.append(
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.2f}x); "
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.2f}x)"
        )
        if self.latency_ratio is not None:
            lines.append(
                f"measured latency {self.latency_before * 1e3:.3f} ms -> "
                f"{self.latency_after * 1e3:.3f} ms ({self.latency_ratio:.2f} of dense)"
            )
        return "\n".join(lines)


def _sizes(model: nn.Module, graph: DependencyGraph) -> dict[tuple[str, int], int]:
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {key: int(tensors[key[0]].shape[key[1]]) for key in graph.dims}


def _scores(
    model: nn.Module,
    groups: list[ChannelGroup],
    criterion: str,
    reduction: str,
    normalizer: str | None,
    seed: int,
) -> dict[int, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        gi: group_importance(model, g, criterion, reduction, normalizer, gen)
        for gi, g in enumerate(groups)
        if g.prunable
    }


def plan_pruning(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | dict[str, float] = 0.5,
    criterion: str = "l1",
    *,
    mode: str = "uniform",
    reduction: str = "sum",
    normalizer: str | None = "mean",
    min_channels: int | float = 1,
    round_to: int | None = None,
    ignore: Iterable[nn.Module | str] = (),
    seed: int = 0,
) -> tuple[list[ChannelGroup], dict[int, Tensor], dict[tuple[str, int], Tensor]]:
    """The lower-level first half of :func:`prune`: groups, pruned positions and kept indices.

    The model is not modified; apply the result with :func:`prunekit.structured.shrink`.
    """
    graph = build_graph(model, example_inputs, ignore)
    groups = find_groups(graph)
    scores = _scores(model, groups, criterion, reduction, normalizer, seed)
    pruned = allocate(
        groups, scores, ratio, mode=mode, min_channels=min_channels, round_to=round_to
    )
    return groups, pruned, keep_indices(groups, pruned, _sizes(model, graph))


def _stale_config(model: nn.Module, widths: dict[int, int]) -> list[str]:
    """Config fields (or list entries) that still hold a width pruning changed (old -> new)."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    values = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    stale = []
    for key, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool) and value in widths:
            stale.append(f"config.{key}={value} (pruned to {widths[value]})")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, int) and not isinstance(v, bool) and v in widths:
                    stale.append(f"config.{key}[{i}]={v} (pruned to {widths[v]})")
    return stale


def _verify(model: nn.Module, example_inputs: Any, widths: dict[int, int] | None = None) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    except Exception as err:  # report any failure with the cause attached
        stale = _stale_config(model, widths or {})
        hint = f"the model config still holds a pruned width: {', '.join(stale)}; " if stale else ""
        raise RuntimeError(
            "the pruned model no longer runs on the example inputs "
            f"({type(err).__name__}: {err}); {hint}a module probably depends on a pruned size "
            "through an attribute or config field prunekit does not know: pass that module in "
            "`ignore`"
        ) from err
    finally:
        model.train(was)


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | dict[str, float] = 0.5,
    criterion: str = "l1",
    *,
    mode: str = "uniform",
    reduction: str = "sum",
    normalizer: str | None = "mean",
    min_channels: int | float = 1,
    round_to: int | None = None,
    ignore: Iterable[nn.Module | str] = (),
    target_macs: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    latency_inputs: Any = None,
    latency_timer: LayerTimer | None = None,
    latency_threads: int | None = None,
    iterative_steps: int = 1,
    loss_fn: Callable[[nn.Module], Tensor] | None = None,
    seed: int = 0,
    inplace: bool = False,
    verify: bool = True,
    uniform_layers: bool = False,
) -> tuple[nn.Module, StructuredPlan]:
    """Remove channels, filters and attention heads; return the smaller model and its plan.

    ``model`` itself is left as it was: the pruned model is a copy (one ``copy.deepcopy``).
    Pass ``inplace=True`` to shrink ``model`` itself and save the copy's memory.

    Args:
        model: any ``nn.Module``; unchanged unless ``inplace=True``.
        example_inputs: a tensor, tuple of positional arguments or dict of keyword arguments
            (batch 1 is enough; it is used to trace the model and to count MACs).
        ratio: fraction of channels removed from every prunable group (``mode="uniform"``) or
            of all prunable channels (``mode="global"``); a dict maps group names to ratios.
        criterion: ``l1``, ``l2``, ``bn_scale``, ``taylor``, ``fpgm`` or ``random``.
        mode: ``uniform`` (per group) or ``global`` (one ranking of normalised scores).
        reduction: how member tensors of a group combine: ``sum``, ``mean`` or ``max``.
        normalizer: per-group normalisation for global ranking (``mean``, ``max``, ``sum``,
            ``standard`` or ``None``).
        min_channels: channels every group keeps at least (int, or a fraction if below 1).
        round_to: kept channel counts become multiples of this (e.g. 8 for fast kernels).
        ignore: modules (or their names) whose channels must not change.
        target_macs / target_params: prune until MACs (parameters) are at most this fraction
            of the original; the per-step ratio is found by bisection and ``ratio`` is ignored.
        target_latency: prune until the *measured* latency is at most this fraction (in (0, 1))
            of the dense model's, on ``latency_inputs`` at their batch size, on the device where
            the model and those inputs live. Widths come from a measured per-layer latency table
            (channels removed by importance per millisecond saved, only to widths that the table
            shows as faster; see :mod:`prunekit.structured.latency`), and the whole pruned model
            is timed to check the goal. ``ratio`` and ``mode`` are ignored; ``round_to`` limits
            the widths tried. The plan records both measured latencies.
        latency_inputs: the inputs to time (default ``example_inputs``); give the batch you
            will deploy with, e.g. ``torch.randn(128, 3, 32, 32)``.
        latency_timer: ``timer(module, inputs) -> seconds`` replacing the clock, called on single
            layers (``inputs`` a tensor) and on whole models (``inputs`` as given); default: the
            median of 7 calls after 2 warm-up calls, without grad.
        latency_threads: torch CPU threads while timing (default: the current setting).
        iterative_steps: reach the target in this many trace-score-shrink rounds.
        loss_fn: ``loss_fn(model) -> loss`` used to compute gradients for ``taylor``.
        seed: seed of the ``random`` criterion.
        inplace: prune ``model`` itself instead of a copy (default False). A ``loss_fn``
            receives the model being pruned (the copy unless ``inplace=True``).
        verify: run the pruned model on ``example_inputs`` and raise if it fails.
        uniform_layers: groups that differ only by a layer index (``layers.0.mlp.up_proj``,
            ``layers.1.mlp.up_proj``) all keep the same width (the widest any of them keeps), so
            that a per-model config such as Hugging Face's ``intermediate_size`` describes every
            layer and ``from_pretrained`` can rebuild the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ValueError(f"iterative_steps: expected a positive int, got {iterative_steps!r}")
    for arg, val in (("target_macs", target_macs), ("target_params", target_params)):
        if val is not None and not 0.0 < val <= 1.0:
            raise ValueError(f"{arg}: expected a fraction in (0, 1], got {val!r}")
    if target_latency is not None:
        if isinstance(target_latency, bool) or not isinstance(target_latency, (int, float)):
            raise TypeError(
                f"target_latency: expected a float, got {type(target_latency).__name__}"
            )
        if not 0.0 < target_latency < 1.0:
            raise ValueError(
                "target_latency: expected a fraction of the dense model's measured latency in "
                f"(0, 1), got {target_latency!r}"
            )
        if iterative_steps != 1:
            raise ValueError("target_latency: works in one step; leave iterative_steps at 1")
    elif latency_inputs is not None or latency_timer is not None or latency_threads is not None:
        raise ValueError(
            "latency_inputs / latency_timer / latency_threads: only used with target_latency"
        )
    if sum(t is not None for t in (target_macs, target_params, target_latency)) > 1:
        raise ValueError(
            "target_macs / target_params / target_latency: give at most one resource target"
        )
    ignore = list(ignore)
    if not inplace:
        # ignore may hold modules of the original: name them before copying.
        names = {id(m): n for n, m in model.named_modules()}
        ignore = [names.get(id(m), m) if isinstance(m, nn.Module) else m for m in ignore]
        model = copy.deepcopy(model)
    macs0 = count_macs(model, example_inputs)
    params0 = count_params(model)
    original: dict[str, int] = {}
    current: dict[str, tuple[int, int, list[str]]] = {}
    touched: set[str] = set()
    kwargs = dict(mode=mode, min_channels=min_channels, round_to=round_to)
    latency: tuple[float, float] | None = None

    def measure(m: nn.Module) -> int:
        return count_macs(m, example_inputs) if target_macs is not None else count_params(m)

    # A criterion that needs data (taylor: gradients) gets a fresh backward pass per step.
    needs_grads = get_criterion(criterion, kind="structured", argument="criterion").requires_data
    for step in range(1, iterative_steps + 1):
        if needs_grads and loss_fn is not None:
            model.zero_grad(set_to_none=True)
            loss_fn(model).backward()
        graph = build_graph(model, example_inputs, ignore)
        groups = find_groups(graph)
        for g in groups:
            if g.prunable:
                original.setdefault(g.name, g.size)
        scores = _scores(model, groups, criterion, reduction, normalizer, seed)
        sizes = _sizes(model, graph)
        if target_latency is not None:
            fit = _fit_latency(
                model,
                groups,
                scores,
                sizes,
                latency_inputs if latency_inputs is not None else example_inputs,
                target_latency,
                timer=latency_timer,
                threads=latency_threads,
                min_channels=min_channels,
                round_to=round_to,
                uniform_layers=uniform_layers,
            )
            pruned, latency = fit.pruned, (fit.dense_seconds, fit.pruned_seconds)
        elif target_macs is not None or target_params is not None:
            target = target_macs if target_macs is not None else target_params
            base = macs0 if target_macs is not None else params0
            goal = base * (1 - (1 - target) * step / iterative_steps)
            pruned = _bisect(model, groups, scores, sizes, goal, measure, kwargs)
        else:
            step_ratio = _step_ratio(ratio, step, iterative_steps)
            if mode == "uniform" and iterative_steps > 1:
                step_ratio = _exact_step(groups, original, ratio, step, iterative_steps)
            pruned = allocate(groups, scores, step_ratio, **kwargs)
        if uniform_layers:
            pruned = _same_width_per_layer(groups, scores, pruned)
        targeted = any(t is not None for t in (target_macs, target_params, target_latency))
        _warn_shortfall(
            groups,
            pruned,
            ratio,
            not targeted and mode == "uniform" and iterative_steps == 1,
            min_channels,
            round_to,
        )
        for gi, g in enumerate(groups):
            if g.prunable:
                removed = len(pruned[gi]) if gi in pruned else 0
                current[g.name] = (g.size - removed, g.unit, [m[0] for m in g.members])
        keep = keep_indices(groups, pruned, sizes)
        touched.update(shrink(model, keep))
    if verify:
        widths = {}
        for name, before in original.items():
            after, unit, _ = current.get(name, (before, 1, []))
            if after != before:
                widths.setdefault(before * unit, after * unit)
        _verify(model, example_inputs, widths)
    changes = [
        GroupChange(name, before, *current.get(name, (before, 1, [])))
        for name, before in original.items()
    ]
    plan = StructuredPlan(
        criterion=criterion,
        ratio=None
        if isinstance(ratio, dict) or target_macs or target_params or target_latency
        else float(ratio),
        macs_before=macs0,
        macs_after=count_macs(model, example_inputs),
        params_before=params0,
        params_after=count_params(model),
        changes=changes,
        modules=sorted(touched),
        latency_before=latency[0] if latency else None,
        latency_after=latency[1] if latency else None,
    )
    return model, plan


def _fit_latency(
    model, groups, scores, sizes, inputs, target, *, timer, threads, min_channels, round_to,
    uniform_layers,
):  # fmt: skip
    """Latency-aware allocation for :func:`prune`; warns when the target is out of reach."""

    def adjust(pruned: dict[int, Tensor]) -> dict[int, Tensor]:
        return _same_width_per_layer(groups, scores, pruned) if uniform_layers else pruned

    with torch_threads(threads):
        fit = fit_latency(
            model,
            groups,
            scores,
            sizes,
            inputs,
            target,
            timer=timer,
            min_channels=min_channels,
            round_to=round_to,
            adjust=adjust,
        )
    if not fit.reached:
        warnings.warn(
            f"target_latency={target!r} not reached: the deepest pruning allowed measures "
            f"{fit.pruned_seconds / fit.dense_seconds:.3f} of the dense latency "
            f"(min_channels={min_channels!r}, round_to={round_to!r})",
            StructuredPruningWarning,
            stacklevel=3,
        )
    return fit


def _layer_pattern(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".#", name)


def _same_width_per_layer(
    groups: list[ChannelGroup], scores: dict[int, Tensor], pruned: dict[int, Tensor]
) -> dict[int, Tensor]:
    """Remove the same number of components from every group of one layer pattern (the fewest)."""
    fewest: dict[tuple[str, int, int], int] = {}
    for gi, g in enumerate(groups):
        if g.prunable:
            key = (_layer_pattern(g.name), g.size, g.unit)
            n = len(pruned.get(gi, ()))
            fewest[key] = min(fewest.get(key, n), n)
    out: dict[int, Tensor] = {}
    for gi, g in enumerate(groups):
        if not g.prunable:
            continue
        n = fewest[(_layer_pattern(g.name), g.size, g.unit)]
        if n:
            out[gi] = torch.argsort(scores[gi], stable=True)[:n]
    return out


def _step_ratio(ratio: float | dict[str, float], step: int, steps: int) -> float | dict[str, float]:
    """Fraction of the *current* channels to remove so that ``step/steps`` of ``ratio`` is done."""

    def one(r: float) -> float:
        done_before = r * (step - 1) / steps
        done_after = r * step / steps
        return 1 - (1 - done_after) / (1 - done_before)

    if isinstance(ratio, dict):
        return {k: one(v) for k, v in ratio.items()}
    return one(ratio)


def _exact_step(
    groups: list[ChannelGroup],
    original: dict[str, int],
    ratio: float | dict[str, float],
    step: int,
    steps: int,
) -> dict[str, float]:
    """Per-group ratios that leave exactly the step's share of each group's original size."""
    out: dict[str, float] = {}
    for g in groups:
        if not g.prunable:
            continue
        r = ratio.get(g.name, 0.0) if isinstance(ratio, dict) else ratio
        size0 = original.get(g.name, g.size)
        keep = size0 - int(size0 * r * step / steps + 1e-9)
        out[g.name] = max(0.0, min(0.999, 1 - keep / g.size + 1e-12))
    return out


def _bisect(model, groups, scores, sizes, goal, measure, kwargs) -> dict[int, Tensor]:
    """Smallest uniform/global ratio whose shrunk model measures at most ``goal``."""

    def trial(r: float) -> tuple[int, dict[int, Tensor]]:
        pruned = allocate(groups, scores, r, **kwargs)
        clone = copy.deepcopy(model)
        shrink(clone, keep_indices(groups, pruned, sizes))
        return measure(clone), pruned

    lo, hi = 0.0, 0.99
    value, best = trial(hi)
    if value > goal:
        return best  # the target is out of reach: prune as much as allowed
    for _ in range(12):
        mid = (lo + hi) / 2
        value, pruned = trial(mid)
        if value <= goal:
            hi, best = mid, pruned
        else:
            lo = mid
    return best
