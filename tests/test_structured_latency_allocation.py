"""Latency-aware allocation: widths follow a (here injected) latency table, not the MACs count."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.structured.latency import prune_for_latency


def _tiles(layer, _x):
    """A device whose Linear time is the number of 16x16 weight tiles: 17..31 wide costs 32."""
    return float(math.ceil(layer.out_features / 16) * math.ceil(layer.in_features / 16))


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    with torch.no_grad():
        model[0].weight.mul_(100.0)  # the first hidden layer's channels matter most
    return model


def test_least_important_group_pays_and_widths_land_on_tiles():
    model = _mlp()
    x = torch.randn(4, 8)
    small, plan = prune_for_latency(model, x, 0.75, normalizer=None, timer=_tiles, inplace=False)
    # full table total 12 tiles; 25% (3 tiles) is saved by halving the less important group
    assert (small[0].out_features, small[2].out_features) == (32, 16)
    assert plan.estimated_ratio == 9 / 12
    assert small(x).shape == (4, 4)
    assert model[2].out_features == 32  # not in place


def test_deeper_target_cuts_both_groups_to_tile_multiples():
    small, plan = prune_for_latency(_mlp(), torch.randn(4, 8), 0.5, timer=_tiles, inplace=False)
    assert (small[0].out_features, small[2].out_features) == (16, 16)
    assert plan.estimated_ratio == 0.5
    assert sorted(plan.widths.values()) == [(32, 16), (32, 16)]


def test_target_latency_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"target_latency: expected a fraction in \(0, 1\)"):
        prune_for_latency(_mlp(), torch.randn(1, 8), 1.5, timer=_tiles)


def test_fractional_floor_keeps_a_share_of_every_group():
    small, _ = prune_for_latency(
        _mlp(), torch.randn(4, 8), 0.5, min_channels=0.75, timer=_tiles, inplace=False
    )
    # 75% of 32 is 24, and the only faster width in the table above 24 is none: nothing moves
    assert (small[0].out_features, small[2].out_features) == (32, 32)
