"""How many components each channel group loses: uniform per group or one global ranking."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunekit.structured.groups import ChannelGroup

__all__ = ["allocate"]


def _step(group: ChannelGroup, round_to: int | None) -> int:
    """Kept components must be a multiple of this so that kept channels are a multiple of round_to."""
    if not round_to or round_to <= 1:
        return 1
    return round_to // math.gcd(round_to, group.unit)


def _min_keep(group: ChannelGroup, min_channels: int | float) -> int:
    if isinstance(min_channels, float) and 0 < min_channels < 1:
        need = math.ceil(min_channels * group.size * group.unit)
    else:
        need = int(min_channels)
    return max(1, min(group.size, math.ceil(need / group.unit)))


def _round_keep(keep: int, size: int, step: int, floor: int) -> int:
    if step > 1:
        keep = min(size, int(math.ceil(keep / step) * step))
    return max(floor, min(size, keep))


def allocate(
    groups: list[ChannelGroup],
    scores: dict[int, Tensor],
    ratio: float | dict[str, float],
    *,
    mode: str = "uniform",
    min_channels: int | float = 1,
    round_to: int | None = None,
) -> dict[int, Tensor]:
    """Positions of the components to prune in each prunable group.

    ``ratio`` is the fraction of channels removed (per group for ``uniform``, of all prunable
    channels for ``global``, weighting a head by its head_dim). A dict maps group names to their own
    ratio (uniform mode; absent groups are left whole). ``min_channels`` keeps at least that many
    channels per group (an int, or a fraction of the group if a float below 1); ``round_to`` makes
    the kept channel count of every group a multiple of it (it rounds up, keeping more).
    """
    if mode not in ("uniform", "global"):
        raise ValueError(f"mode: expected 'uniform' or 'global', got {mode!r}")
    if isinstance(ratio, dict):
        if mode != "uniform":
            raise ValueError("ratio: a per-group dict of ratios needs mode='uniform'")
        for v in ratio.values():
            _check_ratio(v)
    else:
        _check_ratio(ratio)
    plan: dict[int, Tensor] = {}
    if mode == "uniform":
        for gi, s in scores.items():
            g = groups[gi]
            r = ratio.get(g.name, 0.0) if isinstance(ratio, dict) else ratio
            keep = g.size - int(math.floor(g.size * r + 1e-9))
            keep = _round_keep(keep, g.size, _step(g, round_to), _min_keep(g, min_channels))
            if keep < g.size:
                plan[gi] = torch.argsort(s, stable=True)[: g.size - keep]
        return plan
    # Global: one ranking of normalised scores, weighted by channels per component.
    entries = []
    total = 0
    for gi, s in scores.items():
        g = groups[gi]
        total += g.size * g.unit
        for pos, val in enumerate(s.tolist()):
            entries.append((val, gi, pos))
    entries.sort(key=lambda e: e[0])
    budget = ratio * total
    removed = 0.0
    counts = {gi: 0 for gi in scores}
    chosen: dict[int, list[int]] = {gi: [] for gi in scores}
    limits = {gi: groups[gi].size - _min_keep(groups[gi], min_channels) for gi in scores}
    for _val, gi, pos in entries:
        if removed >= budget - 1e-9:
            break
        if counts[gi] >= limits[gi]:
            continue
        chosen[gi].append(pos)
        counts[gi] += 1
        removed += groups[gi].unit
    for gi, positions in chosen.items():
        g = groups[gi]
        keep = _round_keep(g.size - len(positions), g.size, _step(g, round_to), 1)
        n_prune = g.size - keep
        if n_prune > 0:
            plan[gi] = torch.tensor(positions[:n_prune], dtype=torch.long, device="cpu")  # metadata
    return plan


def _check_ratio(r: float) -> None:
    if not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
        raise ValueError(f"ratio: expected a fraction in [0, 1), got {r!r}")
