"""Criteria computed by hand, allocation options and resource targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit.structured as st
from prunekit.core.metrics import count_macs, count_params
from prunekit.models import create_model


def _two_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, -3, 0], [0.5, 0.5, 0], [0, 0, 2]]))
        model[2].weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
    groups = st.find_groups(st.build_graph(model, torch.randn(1, 3)))
    return model, next(g for g in groups if g.prunable)


def test_l1_l2_by_hand():
    model, g = _two_layer()
    l1 = st.group_importance(model, g, "l1", normalizer=None)
    # |row of layer 0| + |column of layer 2|
    assert l1.tolist() == [2.0, 4.0, 2.0, 3.0]
    l2 = st.group_importance(model, g, "l2", reduction="max", normalizer=None)
    torch.testing.assert_close(l2, torch.tensor([1.0, 3.0, 1.0, 2.0]))
    mean = st.group_importance(model, g, "l1", normalizer="mean")
    torch.testing.assert_close(mean, l1 / l1.mean())


def test_taylor_needs_gradients_and_uses_them():
    model, g = _two_layer()
    with pytest.raises(ValueError, match="gradients"):
        st.group_importance(model, g, "taylor")
    model(torch.ones(1, 3)).sum().backward()
    scores = st.group_importance(model, g, "taylor", normalizer=None)
    w0, g0 = model[0].weight, model[0].weight.grad
    w2, g2 = model[2].weight, model[2].weight.grad
    want = (w0 * g0).sum(1).abs() + (w2 * g2).sum(0).abs()
    torch.testing.assert_close(scores, want.detach())


def test_fpgm_and_bn_scale():
    model, g = _two_layer()
    fp = st.group_importance(model, g, "fpgm", normalizer=None)
    rows = model[0].weight.detach()
    want0 = torch.cdist(rows, rows).sum(1)
    cols = model[2].weight.detach().t()
    want = want0 + torch.cdist(cols, cols).sum(1)
    torch.testing.assert_close(fp, want)
    net = create_model("vgg11", width_mult=0.125)
    groups = st.find_groups(st.build_graph(net, torch.randn(1, 3, 32, 32)))
    first = next(x for x in groups if ("features.1.weight", 0) in x.members)
    scores = st.group_importance(net, first, "bn_scale", normalizer=None)
    torch.testing.assert_close(scores, net.features[1].weight.detach().abs())


def test_random_criterion_is_seeded():
    model = create_model("mlp", hidden=(16, 8))
    x = torch.randn(1, 64)
    a, _ = st.prune(model, x, 0.5, "random", seed=3, inplace=False)
    b, _ = st.prune(model, x, 0.5, "random", seed=3, inplace=False)
    torch.testing.assert_close(a.net[1].weight, b.net[1].weight)


def test_round_to_and_min_channels():
    model = create_model("mlp", hidden=(40, 24))
    x = torch.randn(1, 64)
    small, _ = st.prune(model, x, ratio=0.55, round_to=8, inplace=False)
    assert small.net[1].out_features == 24  # 40 * 0.45 = 18 -> 24
    assert small.net[3].out_features == 16  # 24 - 13 = 11 -> 16
    small, _ = st.prune(model, x, ratio=0.9, min_channels=10, inplace=False)
    assert small.net[1].out_features == 10 and small.net[3].out_features == 10
    small, _ = st.prune(model, x, ratio=0.9, min_channels=0.5, inplace=False)
    assert small.net[1].out_features == 20 and small.net[3].out_features == 12


def test_round_to_whole_heads():
    model = create_model("gpt", n_layer=1, n_embd=32, n_head=4, block_size=8)
    ids = torch.randint(0, 256, (1, 4))
    small, _ = st.prune(model, ids, ratio=0.5, round_to=16)
    attn = small.blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim == 8  # 2 heads x 8 = 16 channels
    assert small.blocks[0].mlp.fc_in.out_features % 16 == 0


def test_global_allocation_prunes_the_requested_share():
    torch.manual_seed(0)
    model = create_model("mlp", hidden=(32, 32))
    with torch.no_grad():
        model.net[3].weight.mul_(10)  # the second layer's channels matter more
        model.net[5].weight.mul_(10)
    x = torch.randn(1, 64)
    small, plan = st.prune(model, x, ratio=0.5, mode="global", normalizer=None)
    kept = small.net[1].out_features + small.net[3].out_features
    assert kept == 32
    assert small.net[1].out_features < small.net[3].out_features


@pytest.mark.parametrize("target", ["macs", "params"])
def test_resource_target(target):
    torch.manual_seed(0)
    model = create_model("resnet20", width=8, option="B")
    x = torch.randn(1, 3, 8, 8)
    macs0, params0 = count_macs(model, x), count_params(model)
    kw = {"target_macs": 0.4} if target == "macs" else {"target_params": 0.4}
    small, plan = st.prune(model, x, iterative_steps=2, **kw)
    value = count_macs(small, x) if target == "macs" else count_params(small)
    base = macs0 if target == "macs" else params0
    assert value <= 0.4 * base
    assert value >= 0.25 * base  # it does not overshoot wildly
    assert plan.macs_after == count_macs(small, x)


def test_count_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 5))
    x = torch.randn(2, 3, 4, 4)
    assert count_macs(model, x) == 2 * (8 * 16 * 27 + 5 * 128)
    assert count_params(model) == 8 * 27 + 8 + 5 * 128 + 5
    att = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(1, 5, 8)
    macs = count_macs(att, (q, q, q))
    assert macs == 3 * 5 * 64 + 5 * 64 + 2 * 5 * 5 * 8


def test_taylor_through_prune_with_loss_fn():
    torch.manual_seed(0)
    model = create_model("mlp", hidden=(16, 8))
    x, y = torch.randn(4, 64), torch.randint(0, 10, (4,))

    def loss_fn(m):
        return torch.nn.functional.cross_entropy(m(x), y)

    small, plan = st.prune(model, x[:1], ratio=0.5, criterion="taylor", loss_fn=loss_fn)
    assert small.net[1].out_features == 8 and plan.criterion == "taylor"


def test_iterative_steps_reach_the_ratio():
    torch.manual_seed(0)
    model = create_model("mlp", hidden=(64, 32))
    small, plan = st.prune(model, torch.randn(1, 64), ratio=0.5, iterative_steps=3)
    assert small.net[1].out_features == 32 and small.net[3].out_features == 16
    assert [(c.before, c.after) for c in plan.changes] == [(64, 32), (32, 16)]
