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


def _model_tiles(module, _inputs):
    """A deterministic clock: 16x16 tiles of every Linear, plus 2 units of fixed overhead for a
    whole model (activations and the like, which no table row sees)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    tiles = sum(_tiles(m, None) for m in linears)
    return tiles + (2.0 if len(linears) > 1 else 0.0)


def test_prune_target_latency_meets_measured_goal_with_most_channels_kept():
    import prunekit.structured as st

    x = torch.randn(4, 8)
    # dense: 2 + 4 + 2 tiles + 2 overhead = 10. Halving the less important second group costs
    # 2 + 2 + 1 + 2 = 7 (so does halving the first); halving both 1 + 1 + 1 + 2 = 5.
    small, plan = st.prune(
        _mlp(), x, target_latency=0.75, normalizer=None, latency_timer=_model_tiles
    )
    assert (small[0].out_features, small[2].out_features) == (32, 16)
    assert (plan.latency_before, plan.latency_after, plan.latency_ratio) == (10.0, 7.0, 0.7)
    assert plan.ratio is None and "0.70 of dense" in plan.summary()
    small, plan = st.prune(_mlp(), x, target_latency=0.6, latency_timer=_model_tiles)
    assert (small[0].out_features, small[2].out_features) == (16, 16)
    assert plan.latency_after == 5.0 and plan.latency_after <= 0.6 * plan.latency_before
    assert small(x).shape == (4, 4)


def test_prune_target_latency_times_the_latency_inputs_and_threads():
    import prunekit.structured as st

    seen = []

    def clock(module, inputs):
        seen.append((tuple(inputs.shape), torch.get_num_threads()))
        return _model_tiles(module, inputs)

    threads = torch.get_num_threads()
    big = torch.randn(64, 8)
    st.prune(_mlp(), big[:1], target_latency=0.75, latency_inputs=big, latency_timer=clock,
             latency_threads=2)  # fmt: skip
    assert {s[0][0] for s in seen} == {64} and {s[1] for s in seen} == {2}
    assert torch.get_num_threads() == threads  # restored


def test_prune_target_latency_round_to_and_out_of_reach_warns():
    import prunekit.structured as st

    x = torch.randn(4, 8)
    with pytest.warns(st.StructuredPruningWarning, match=r"target_latency=0.2 not reached"):
        small, plan = st.prune(_mlp(), x, target_latency=0.2, latency_timer=_model_tiles)
    assert (small[0].out_features, small[2].out_features) == (16, 16)  # no tile saves more
    assert plan.latency_ratio == 0.5
    # round_to=32 leaves no narrower width in the table: nothing can go
    with pytest.warns(st.StructuredPruningWarning, match=r"round_to=32\)"):
        small, plan = st.prune(
            _mlp(), x, target_latency=0.6, round_to=32, latency_timer=_model_tiles
        )
    assert (small[0].out_features, small[2].out_features) == (32, 32)
    assert plan.latency_ratio == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(target_latency=1.0), ValueError, r"target_latency: expected a fraction of the dense"),
        (dict(target_latency=0.0), ValueError, r"target_latency: expected a fraction of the dense"),
        (dict(target_latency="fast"), TypeError, r"target_latency: expected a float, got str"),
        (dict(target_latency=0.5, target_macs=0.5), ValueError, r"at most one resource target"),
        (dict(target_latency=0.5, iterative_steps=2), ValueError, r"target_latency: works in one"),
        (dict(target_latency=0.5, latency_threads=0), ValueError, r"latency_threads: expected a"),
        (dict(latency_threads=1), ValueError, r"latency_threads: only used with target_latency"),
    ],
)
def test_prune_target_latency_bad_arguments_name_themselves(kwargs, error, message):
    import prunekit.structured as st

    with pytest.raises(error, match=message):
        st.prune(_mlp(), torch.randn(2, 8), latency_timer=_model_tiles, **kwargs)


def test_table_rounds_interleave_widths_so_a_burst_of_load_is_outvoted():
    from prunekit.structured import build_graph, find_groups
    from prunekit.structured.latency import latency_table

    model, x = _mlp(), torch.randn(4, 8)
    groups = find_groups(build_graph(model, x))
    calls = []

    def bursty(layer, x):  # the machine is 10x slower during the first 5 calls
        calls.append(layer.out_features)
        return _tiles(layer, x) * (10.0 if len(calls) <= 5 else 1.0)

    clean = latency_table(model, x, groups, levels=4, timer=_tiles, rounds=1)
    assert latency_table(model, x, groups, levels=4, timer=bursty, rounds=3) == clean
    first_group = calls[: len(calls) // 2]  # 3 rounds over the widths of the first group
    assert first_group[: len(first_group) // 3] * 3 == first_group
    with pytest.raises(ValueError, match="rounds: expected a positive int"):
        latency_table(model, x, groups, timer=_tiles, rounds=0)
