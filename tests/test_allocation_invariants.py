"""Invariants over every registered criterion x allocation: exact sparsity, boolean masks, no
resurrection, masks surviving training."""

from __future__ import annotations

import math

import pytest
import torch

import prunekit
from conftest import toy_cnn, toy_mlp
from prunekit.core.allocation import ALLOCATIONS, erk_densities, parse_nm
from prunekit.criteria import CRITERIA

DATA_FREE_METHODS = [m for m in CRITERIA.names() if not CRITERIA.get(m).requires_data]
ALLOCS = ALLOCATIONS.names() + ["2:4", "1:4", "4:8"]


def _sparsity_for(allocation: str) -> float | None:
    return None if parse_nm(allocation) else 0.7


def _zeros(model, masks):
    params = dict(model.named_parameters())
    return {n: int((params[n] == 0).sum()) for n in masks}


@pytest.mark.parametrize("factory", [toy_mlp, toy_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("allocation", ALLOCS)
@pytest.mark.parametrize("method", DATA_FREE_METHODS)
def test_exact_sparsity_and_boolean_masks(method, allocation, factory):
    model = factory()
    sparsity = _sparsity_for(allocation)
    masks = prunekit.prune(model, sparsity, method=method, allocation=allocation)
    assert all(m.dtype == torch.bool for m in masks.values())
    plan = {n: int((~m).sum()) for n, m in masks.items()}
    # each layer's zero count equals the mask's pruned count exactly
    assert _zeros(model, masks) == plan
    total = sum(m.numel() for m in masks.values())
    if parse_nm(allocation):
        n, m = parse_nm(allocation)
        assert masks.num_pruned == round(total * (1 - n / m))
    elif allocation == "per_row":
        assert abs(masks.num_pruned - sparsity * total) <= sum(m.shape[0] for m in masks.values())
    else:
        assert abs(masks.num_pruned - sparsity * total) <= len(masks)


@pytest.mark.parametrize("allocation", ["uniform", "erk", "uniform_plus"])
def test_budget_allocations_hit_their_plan(allocation):
    model = toy_mlp()
    plan = prunekit.pruning_plan(model, 0.7, allocation=allocation)
    masks = prunekit.prune(model, 0.7, allocation=allocation)
    assert {n: int((~m).sum()) for n, m in masks.items()} == {n: k for n, (_, k) in plan.items()}
    total = sum(p for p, _ in plan.values())
    assert abs(sum(k for _, k in plan.values()) - 0.7 * total) <= 1


def test_uniform_prunes_each_layer_to_target():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.75, allocation="uniform")
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.75 * mask.numel()), name


def test_global_threshold_is_exact_kth_value():
    model = toy_mlp()
    weights = torch.cat(
        [p.detach().abs().flatten() for n, p in model.named_parameters() if n.endswith("weight")]
    )
    k = round(0.6 * weights.numel())
    threshold = weights.sort().values[k - 1]
    masks = prunekit.prune(model, 0.6)
    pruned = torch.cat([(~m).flatten() for m in masks.values()])
    assert int(pruned.sum()) == k
    assert bool((weights[pruned] <= threshold).all())
    assert bool((weights[~pruned] >= threshold).all())


def test_global_selection_on_large_layers_uses_sampling_and_stays_exact():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(700, 600), torch.nn.Linear(600, 500)
    )  # > sample size
    masks = prunekit.prune(model, 0.9)
    assert masks.num_pruned == round(0.9 * (700 * 600 + 600 * 500))


def test_ties_are_broken_deterministically():
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    masks = prunekit.prune(model, 0.5)
    assert masks.num_pruned == 100
    # all scores tie: the earlier layer and lower index go first
    assert not masks["0.weight"].any() and masks["1.weight"].all()


@pytest.mark.parametrize("allocation", ["lamp", "global_min_keep"])
def test_lamp_and_min_keep_never_empty_a_layer(allocation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(100, 200), torch.nn.Linear(200, 100), torch.nn.Linear(100, 10)
    )
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # tiny weights: global magnitude would empty this layer
    masks = prunekit.prune(model, 0.999, allocation=allocation)
    assert all(int(m.sum()) >= 1 for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(masks.num_pruned - round(0.999 * total)) <= len(masks)


def test_global_without_min_keep_does_empty_that_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(100, 200), torch.nn.Linear(200, 100), torch.nn.Linear(100, 10)
    )
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    masks = prunekit.prune(model, 0.999)
    assert int(masks["2.weight"].sum()) == 0


def test_min_keep_count_is_honoured():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.95, min_keep=40)
    assert all(int(m.sum()) >= min(40, m.numel()) for m in masks.values())


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_erk_densities_never_exceed_one_and_total_is_exact(sparsity):
    shapes = {
        "a": torch.Size([16, 3, 3, 3]),
        "b": torch.Size([32, 16, 3, 3]),
        "c": torch.Size([512, 32]),
        "d": torch.Size([10, 512]),
    }
    densities = erk_densities(shapes, 1 - sparsity)
    assert all(0 < d <= 1 for d in densities.values())
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    kept = sum(densities[n] * sizes[n] for n in shapes)
    assert math.isclose(kept, (1 - sparsity) * sum(sizes.values()), rel_tol=1e-9)


def test_erk_realised_total_is_exact():
    model = toy_cnn()
    masks = prunekit.prune(model, 0.9, allocation="erk")
    assert masks.num_pruned == round(0.9 * masks.numel)


def test_uniform_plus_keeps_first_dense_and_caps_last():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.6, allocation="uniform_plus")
    names = list(masks)
    assert bool(masks[names[0]].all())
    assert masks.layer_sparsity()[names[-1]] <= 0.8 + 1e-9
    assert abs(masks.num_pruned - round(0.6 * masks.numel)) <= len(masks)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_every_nm_group_holds_the_pattern(pattern):
    n, m = parse_nm(pattern)
    model = toy_cnn()
    masks = prunekit.prune(model, allocation=pattern)
    for name, mask in masks.items():
        groups = mask.movedim(1, -1).reshape(-1, m)
        assert bool((groups.sum(1) == n).all()), name


def test_per_row_prunes_each_row_to_target():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.5, allocation="per_row")
    for mask in masks.values():
        rows = mask.reshape(mask.shape[0], -1)
        assert bool(((~rows).sum(1) == round(0.5 * rows.shape[1])).all())


@pytest.mark.parametrize("allocation", ALLOCS)
@pytest.mark.parametrize("method", DATA_FREE_METHODS)
def test_iterative_pruning_never_resurrects(method, allocation):
    model = toy_mlp()
    if parse_nm(allocation):
        first = prunekit.prune(model, 0.3, method=method, allocation="per_row")
        second = prunekit.prune(model, method=method, allocation=allocation, masks=first)
    else:
        first = prunekit.prune(model, 0.3, method=method, allocation=allocation, seed=1)
        second = prunekit.prune(
            model, 0.6, method=method, allocation=allocation, masks=first, seed=2
        )
    assert second.is_subset_of(first)
    assert second.num_pruned >= first.num_pruned


def test_masks_never_grow_error():
    model = toy_mlp()
    first = prunekit.prune(model, 0.6)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="never grow"):
        prunekit.prune(model, 0.3, masks=first)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_many_tied_zeros_are_selected_in_index_order(sparsity):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(800, 700), torch.nn.Linear(700, 600))
    with torch.no_grad():
        for p in model.parameters():
            p[torch.rand_like(p) < 0.9] = 0.0  # about 90% exact zeros, no masks given
    weights = torch.cat(
        [p.detach().abs().flatten() for n, p in model.named_parameters() if n.endswith("weight")]
    )
    k = round(sparsity * weights.numel())
    masks = prunekit.compute_masks(model, sparsity)
    pruned = torch.cat([(~masks[n]).flatten() for n in masks])
    assert int(pruned.sum()) == k
    # the pruned set is exactly the k smallest under the (value, position) order
    order = torch.sort(weights, stable=True).indices
    expected = torch.zeros_like(pruned)
    expected[order[:k]] = True
    assert torch.equal(pruned, expected)
