"""Latency-aware channel allocation: per-group widths chosen from a measured latency table.

Narrow convolutions fill vector units badly, so removing channels does not save time in proportion
to MACs (a 15-channel conv can be as slow as a 16-channel one). Here every prunable group gets a
table ``width -> seconds`` measured on the target device: each Conv1d / Conv2d / Linear whose input
or output channels belong to the group is timed alone, on the input shape it sees in
``example_inputs`` (so the batch size is yours), at a ladder of candidate widths. A greedy then
removes, step by step, the channels with the lowest importance per millisecond saved, moving each
group only to widths that the table says are faster (a per-layer ``round_to`` chosen by
measurement), until the estimated latency reaches ``target_latency`` (a fraction of the dense
model's). The estimate adds per-group savings (a layer shared by two groups is counted in both)
and leaves out normalisation, activations and additions, so :func:`fit_latency` (what
``prunekit.structured.prune(..., target_latency=...)`` uses) closes the loop: it bisects the
table's target until the *measured* latency of the whole pruned model meets the goal.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.structured.allocation import _min_keep
from prunekit.structured.criteria import group_importance
from prunekit.structured.graph import build_graph
from prunekit.structured.groups import ChannelGroup, find_groups
from prunekit.structured.shrink import keep_indices, shrink

__all__ = [
    "LatencyFit",
    "LatencyPlan",
    "allocate_by_latency",
    "fit_latency",
    "latency_table",
    "median_seconds",
    "paired_seconds",
    "prune_for_latency",
]

# ``timer(module, inputs) -> seconds``: ``inputs`` is a tensor for one layer, or the example
# inputs (tensor, tuple or dict) for a whole model.
LayerTimer = Callable[[nn.Module, Any], float]
_TIMED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _cuda_devices(inputs: Any) -> set[torch.device]:
    values = inputs.values() if isinstance(inputs, dict) else inputs
    values = values if isinstance(values, (tuple, list)) or isinstance(inputs, dict) else [values]
    return {v.device for v in values if isinstance(v, Tensor) and v.is_cuda}


def median_seconds(module: nn.Module, inputs: Any, repeats: int = 7, warmup: int = 2) -> float:
    """Median seconds of ``module(inputs)`` without grad after ``warmup`` calls.

    ``inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs; CUDA work
    is synchronised before the clock stops."""
    devices = _cuda_devices(inputs)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            elapsed = _timed_call(module, inputs, devices)
            if i >= warmup:
                times.append(elapsed)
    return statistics.median(times)


def _timed_call(module: nn.Module, inputs: Any, devices: set[torch.device]) -> float:
    """Seconds of one ``module(inputs)``, CUDA work on ``devices`` synchronised around it."""
    for d in devices:
        torch.cuda.synchronize(d)
    start = time.perf_counter()
    _call(module, inputs)
    for d in devices:
        torch.cuda.synchronize(d)
    return time.perf_counter() - start


def _layer_inputs(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """Input shape of every Conv1d / Conv2d / Linear on ``example_inputs`` (first call)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _TIMED):

            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                shapes.setdefault(name, tuple(args[0].shape))

            handles.append(module.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return shapes


def _resized(module: nn.Module, axis: int, width: int) -> nn.Module:
    """A fresh layer like ``module`` with ``width`` output (axis 0) or input (axis 1) channels."""
    if isinstance(module, nn.Linear):
        out_f, in_f = module.out_features, module.in_features
        out_f, in_f = (width, in_f) if axis == 0 else (out_f, width)
        return nn.Linear(in_f, out_f, bias=module.bias is not None).to(module.weight.device)
    conv = module
    out_c, in_c, groups = conv.out_channels, conv.in_channels, conv.groups
    if groups == in_c == out_c:  # depthwise: both sides shrink together
        out_c = in_c = groups = width
    elif axis == 0:
        out_c = width
    else:
        in_c = width
    return type(conv)(
        in_c,
        out_c,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        conv.bias is not None,
    ).to(conv.weight.device)


def _candidates(size: int, levels: int) -> list[int]:
    """Kept-component counts worth timing: an even ladder plus multiples of 8 and 16."""
    step = max(1, size // levels)
    widths = {size - i * step for i in range(levels + 1)} | set(range(8, size + 1, 8))
    return sorted(w for w in widths if 1 <= w <= size)


def _quick_seconds(module: nn.Module, x: Tensor) -> float:
    """One round of the table's default clock: median of 3 calls after 1 warm-up call."""
    return median_seconds(module, x, repeats=3, warmup=1)


def latency_table(
    model: nn.Module,
    example_inputs: Any,
    groups: list[ChannelGroup],
    *,
    levels: int = 16,
    timer: LayerTimer | None = None,
    rounds: int = 3,
) -> dict[int, dict[int, float]]:
    """``{group index: {kept components: seconds}}`` for every prunable group.

    The time of a group at a width is the sum over its Conv1d / Conv2d / Linear members (output or
    input channels) of that layer alone at that width, on the input shape it sees in
    ``example_inputs``. The widths of a group are timed in ``rounds`` interleaved passes and the
    median kept, so that a burst of load on a shared machine slows all widths alike instead of
    making one look slow. ``timer(layer, x) -> seconds`` replaces the clock (default: median of
    3 calls after a warm-up call, per round).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    timer = timer or _quick_seconds
    shapes = _layer_inputs(model, example_inputs)
    modules = dict(model.named_modules())
    table: dict[int, dict[int, float]] = {}
    for gi, group in enumerate(groups):
        if not group.prunable:
            continue
        members = []
        for name, axis in group.members:
            owner, _, leaf = name.rpartition(".")
            module = modules.get(owner)
            if leaf != "weight" or owner not in shapes or axis not in (0, 1):
                continue
            if isinstance(module, _TIMED):
                per = int(group.member_index((name, axis)).shape[1])
                members.append((module, axis, per, shapes[owner]))
        # The layers of every width, built once and timed round-robin.
        cases: dict[int, list[tuple[nn.Module, Tensor]]] = {}
        inputs: dict[tuple, Tensor] = {}  # one random input per shape
        for width in _candidates(group.size, levels):
            cases[width] = []
            for module, axis, per, shape in members:
                layer = _resized(module, axis, width * per)
                x_shape = list(shape)
                if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                    x_shape[1] = layer.in_channels
                else:
                    x_shape[-1] = layer.in_features
                dtype = module.weight.dtype
                key = (tuple(x_shape), dtype, module.weight.device)
                if key not in inputs:
                    inputs[key] = torch.randn(x_shape, device=module.weight.device, dtype=dtype)
                cases[width].append((layer.to(dtype).eval(), inputs[key]))
        times: dict[int, list[float]] = {w: [] for w in cases}
        for _ in range(rounds):
            for width, layers in cases.items():
                times[width].append(sum(float(timer(layer, x)) for layer, x in layers))
        table[gi] = {w: statistics.median(ts) for w, ts in times.items()}
    return table


def allocate_by_latency(
    groups: list[ChannelGroup],
    scores: dict[int, Tensor],
    table: dict[int, dict[int, float]],
    target_latency: float,
    *,
    min_channels: int | float = 1,
) -> dict[int, Tensor]:
    """Positions to prune per group so the table's estimated latency falls to ``target_latency``
    (a fraction of the full-width estimate), removing the least important channels per
    millisecond saved. Groups only move to widths the table shows as faster. ``min_channels``
    is the floor per group: channels (an int) or a fraction of the group (a float below 1)."""
    if not 0.0 < target_latency < 1.0:
        raise ValueError(f"target_latency: expected a fraction in (0, 1), got {target_latency!r}")
    keep = {gi: groups[gi].size for gi in table if gi in scores}
    full = {gi: table[gi][keep[gi]] for gi in keep}
    total = sum(full.values())
    if total <= 0:
        return {}
    ordered = {gi: torch.sort(scores[gi]).values.tolist() for gi in keep}
    floor = {gi: _min_keep(groups[gi], min_channels) for gi in keep}
    budget = (1.0 - target_latency) * total
    saved = 0.0
    while saved < budget - 1e-15:
        best: tuple[float, int, int] | None = None
        for gi, now in keep.items():
            current = table[gi][now]
            # the widest measured width that is actually faster than the current one
            faster = [w for w, t in table[gi].items() if w < now and w >= floor[gi] and t < current]
            if not faster:
                continue
            width = max(faster)
            lost = sum(ordered[gi][groups[gi].size - now : groups[gi].size - width])
            ratio = lost / (current - table[gi][width])
            if best is None or ratio < best[0]:
                best = (ratio, gi, width)
        if best is None:
            break
        _, gi, width = best
        saved += table[gi][keep[gi]] - table[gi][width]
        keep[gi] = width
    return {
        gi: torch.argsort(scores[gi], stable=True)[: groups[gi].size - k]
        for gi, k in keep.items()
        if k < groups[gi].size
    }


@dataclass
class LatencyPlan:
    """What :func:`prune_for_latency` did: widths per group and estimated / measured latency."""

    widths: dict[str, tuple[int, int]]  # group name -> (before, after) components
    estimated_ratio: float  # table estimate, pruned / dense
    table: dict[int, dict[int, float]] = field(repr=False, default_factory=dict)


def prune_for_latency(
    model: nn.Module,
    example_inputs: Any,
    target_latency: float,
    criterion: str = "l1",
    *,
    normalizer: str | None = "mean",
    min_channels: int | float = 1,
    ignore: Iterable[nn.Module | str] = (),
    levels: int = 16,
    timer: LayerTimer | None = None,
    table: dict[int, dict[int, float]] | None = None,
    inplace: bool = True,
) -> tuple[nn.Module, LatencyPlan]:
    """Prune channels so the model's estimated latency on ``example_inputs`` (at their batch
    size, on their device) becomes ``target_latency`` times the dense one.

    Widths come from :func:`latency_table` and :func:`allocate_by_latency`; ``criterion`` and
    ``normalizer`` score channels as in :func:`prunekit.structured.prune`; ``min_channels`` is the
    floor of every group (an int, or a fraction of the group if a float below 1: with a
    per-channel importance that ignores how much of a layer is already gone, a floor such as 0.25
    keeps the greedy from emptying the layers that are slowest per channel). Pass the ``table``
    of an earlier plan for the same model and inputs to skip measuring it again.
    """
    if not 0.0 < target_latency < 1.0:
        raise ValueError(f"target_latency: expected a fraction in (0, 1), got {target_latency!r}")
    if not inplace:
        model = copy.deepcopy(model)
    graph = build_graph(model, example_inputs, ignore)
    groups = find_groups(graph)
    gen = torch.Generator().manual_seed(0)
    scores = {
        gi: group_importance(model, g, criterion, "sum", normalizer, gen)
        for gi, g in enumerate(groups)
        if g.prunable
    }
    if table is None:
        table = latency_table(model, example_inputs, groups, levels=levels, timer=timer)
    pruned = allocate_by_latency(groups, scores, table, target_latency, min_channels=min_channels)
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    sizes = {key: int(tensors[key[0]].shape[key[1]]) for key in graph.dims}
    shrink(model, keep_indices(groups, pruned, sizes))
    before = sum(row[max(row)] for row in table.values())
    after = sum(row[groups[gi].size - len(pruned.get(gi, ()))] for gi, row in table.items())
    widths = {
        groups[gi].name: (groups[gi].size, groups[gi].size - len(pruned.get(gi, ())))
        for gi in table
    }
    return model, LatencyPlan(widths, after / before if before else 1.0, table)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (unchanged when ``None``)."""
    if threads is None:
        yield
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"latency_threads: expected a positive int, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rounded_table(
    table: dict[int, dict[int, float]], groups: list[ChannelGroup], round_to: int | None
) -> dict[int, dict[int, float]]:
    """The table without widths whose channel count is not a multiple of ``round_to``."""
    if not round_to or round_to <= 1:
        return table
    return {
        gi: {
            w: t
            for w, t in row.items()
            if w == groups[gi].size or (w * groups[gi].unit) % round_to == 0
        }
        for gi, row in table.items()
    }


def paired_seconds(
    dense: nn.Module,
    pruned: nn.Module,
    inputs: Any,
    timer: LayerTimer | None = None,
    repeats: int = 7,
) -> tuple[float, float]:
    """Seconds per call of ``dense`` and ``pruned`` on ``inputs``, measured side by side.

    Without ``timer`` the calls alternate (2 warm-up rounds, median of ``repeats``), so that
    load from other processes slows both alike and their ratio stays meaningful on a busy
    machine; with ``timer`` it is ``timer(dense, inputs), timer(pruned, inputs)``."""
    if timer is not None:
        pair = float(timer(dense, inputs)), float(timer(pruned, inputs))
    else:
        devices = _cuda_devices(inputs)
        times: tuple[list[float], list[float]] = ([], [])
        with torch.no_grad():
            for i in range(2 + repeats):
                for slot, module in enumerate((dense, pruned)):
                    elapsed = _timed_call(module, inputs, devices)
                    if i >= 2:
                        times[slot].append(elapsed)
        pair = statistics.median(times[0]), statistics.median(times[1])
    if not all(math.isfinite(t) and t > 0 for t in pair):
        raise ValueError(f"timer: expected positive numbers of seconds, got {pair!r}")
    return pair


@dataclass
class LatencyFit:
    """What :func:`fit_latency` chose and measured."""

    pruned: dict[int, Tensor]  # group index -> positions removed
    dense_seconds: float  # whole model, measured beside the chosen pruned model
    pruned_seconds: float  # whole pruned model, measured
    reached: bool  # pruned_seconds <= target * dense_seconds
    trials: int  # pruned models built and timed


def fit_latency(
    model: nn.Module,
    groups: list[ChannelGroup],
    scores: dict[int, Tensor],
    sizes: dict[tuple[str, int], int],
    inputs: Any,
    target_latency: float,
    *,
    timer: LayerTimer | None = None,
    min_channels: int | float = 1,
    round_to: int | None = None,
    levels: int = 8,
    steps: int = 8,
    table: dict[int, dict[int, float]] | None = None,
    adjust: Callable[[dict[int, Tensor]], dict[int, Tensor]] | None = None,
) -> LatencyFit:
    """Positions to prune so the whole model measures at most ``target_latency`` times the
    dense model's latency on ``inputs`` (their batch size, the model's device).

    The latency table (:func:`latency_table`, on ``inputs``) drives
    :func:`allocate_by_latency`; its target is bisected (``steps`` trials) so that each trial's
    pruned copy of ``model``, timed whole beside the dense model (:func:`paired_seconds`, which
    uses ``timer(model, inputs)`` when given), meets the goal while keeping as many channels as
    possible. ``adjust(pruned) -> pruned`` post-processes every
    allocation (e.g. equal widths per layer). When even the deepest allocation the floors allow
    misses the goal, that allocation is returned with ``reached=False``. ``model`` is not changed.
    """
    if isinstance(target_latency, bool) or not isinstance(target_latency, (int, float)):
        raise TypeError(f"target_latency: expected a float, got {type(target_latency).__name__}")
    if not 0.0 < target_latency < 1.0:
        raise ValueError(
            "target_latency: expected a fraction of the dense model's measured latency in (0, 1), "
            f"got {target_latency!r}"
        )
    was = model.training
    model.eval()
    try:
        if table is None:
            table = latency_table(model, inputs, groups, levels=levels, timer=timer)
        table = rounded_table(table, groups, round_to)
        # (dense seconds, pruned seconds, pruned positions) per set of widths
        seen: dict[tuple, tuple[float, float, dict[int, Tensor]]] = {}

        def trial(estimate: float) -> tuple[float, float, dict[int, Tensor]]:
            pruned = allocate_by_latency(groups, scores, table, estimate, min_channels=min_channels)
            if adjust is not None:
                pruned = adjust(pruned)
            key = tuple(sorted((gi, len(p)) for gi, p in pruned.items()))
            if key not in seen:  # the same widths need no second measurement
                clone = copy.deepcopy(model)
                shrink(clone, keep_indices(groups, pruned, sizes))
                seen[key] = (*paired_seconds(model, clone.eval(), inputs, timer), pruned)
            return seen[key]

        best: tuple[float, float, float, dict[int, Tensor]] | None = None
        low, high, estimate = 0.0, 1.0, target_latency
        for _ in range(steps):
            dense, seconds, pruned = trial(estimate)
            if seconds <= target_latency * dense:
                if best is None or estimate > best[0]:
                    best = (estimate, dense, seconds, pruned)
                low = estimate
            else:
                high = estimate
            estimate = (low + high) / 2
        if best is None:  # as deep as the floors allow
            best = (1e-9, *trial(1e-9))
        _, dense, seconds, pruned = best
        return LatencyFit(pruned, dense, seconds, seconds <= target_latency * dense, len(seen))
    finally:
        model.train(was)
