"""Each bad input raises a clear error naming the argument, and leaves the model untouched."""

from __future__ import annotations

import math

import pytest
import torch

import prunekit
from conftest import toy_mlp
from prunekit import MaskSet


def _snapshot(model):
    return {n: p.clone() for n, p in model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(before[n], p) for n, p in model.state_dict().items())


CASES = [
    ("sparsity", dict(sparsity=1.0), ValueError),
    ("sparsity", dict(sparsity=-0.1), ValueError),
    ("sparsity", dict(sparsity=math.nan), ValueError),
    ("sparsity", dict(sparsity="0.5"), TypeError),
    ("sparsity", dict(sparsity=None), ValueError),
    ("method", dict(sparsity=0.5, method="nope"), ValueError),
    ("allocation", dict(sparsity=0.5, allocation="nope"), ValueError),
    ("allocation", dict(sparsity=0.5, allocation="4:4"), ValueError),
    ("allocation", dict(sparsity=0.5, allocation="5:4"), ValueError),
    ("sparsity", dict(sparsity=0.9, allocation="2:4"), ValueError),
    ("min_keep", dict(sparsity=0.5, min_keep=-1), ValueError),
]


@pytest.mark.parametrize("argument,kwargs,error", CASES)
def test_bad_arguments(argument, kwargs, error):
    model = toy_mlp()
    before = _snapshot(model)
    with pytest.raises(error, match=argument):
        prunekit.prune(model, **kwargs)
    assert _unchanged(model, before)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*magnitude"):
        prunekit.prune(toy_mlp(), 0.5, method="nope")


def test_model_without_prunable_parameters():
    model = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Embedding(3, 4))
    with pytest.raises(ValueError, match="no prunable parameters"):
        prunekit.prune(model, 0.5)


def test_not_a_module():
    with pytest.raises(TypeError, match="model"):
        prunekit.prune([1, 2, 3], 0.5)


def test_nm_input_size_not_divisible():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8))
    before = _snapshot(model)
    with pytest.raises(ValueError, match="multiple of 4"):
        prunekit.prune(model, allocation="2:4")
    assert _unchanged(model, before)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("allocation", ["global", "uniform", "per_row", "2:4", "lamp"])
def test_non_finite_weights(bad, method, allocation):
    model = toy_mlp()
    with torch.no_grad():
        model[2].weight[3, 5] = bad
    before = _snapshot(model)
    sparsity = None if ":" in allocation else 0.5
    with pytest.raises(ValueError, match="NaN or inf"):
        prunekit.prune(model, sparsity, method=method, allocation=allocation)
    assert all(
        torch.equal(
            before[n],
            p,
        )
        or n == "2.weight"
        for n, p in model.state_dict().items()
    )
    assert torch.equal(before["2.weight"].isnan(), model.state_dict()["2.weight"].isnan())


def test_mismatched_masks_name_the_parameter():
    model = toy_mlp()
    before = _snapshot(model)
    masks = MaskSet({"2.weight": torch.ones(5, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="2.weight"):
        prunekit.prune(model, 0.5, masks=masks)
    assert _unchanged(model, before)


def test_invalid_target_pattern():
    with pytest.raises(ValueError, match="include"):
        prunekit.Targets(include=["("])
