"""``structured.prune`` returns a pruned copy and leaves the model alone, unless inplace=True."""

from __future__ import annotations

import torch

import prunekit.structured as st
from prunekit.models import create_model


def test_prune_returns_a_copy_by_default():
    model = create_model("mlp", hidden=(16, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 64)
    expected = model(x)
    small, plan = st.prune(model, x[:1], ratio=0.5)
    assert small is not model and small.net[1].out_features == 8
    assert model.net[1].out_features == 16  # the original keeps its size and weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), expected)
    assert plan.macs_after < plan.macs_before


def test_inplace_shrinks_the_model_itself():
    model = create_model("mlp", hidden=(16, 8))
    small, _ = st.prune(model, torch.randn(1, 64), ratio=0.5, inplace=True)
    assert small is model and model.net[1].out_features == 8


def test_ignore_by_module_object_survives_the_copy():
    model = create_model("mlp", hidden=(16, 8))
    small, _ = st.prune(model, torch.randn(1, 64), ratio=0.5, ignore=[model.net[1]])
    assert small.net[1].out_features == 16 and small.net[3].out_features == 4
