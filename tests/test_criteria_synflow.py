"""SynFlow: conservation, the iterative result reproduced by a global threshold, no side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.criteria import create_criterion
from prunekit.criteria.synflow import synflow_scores


def _linear_net(positive: bool = True):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 9, bias=False), nn.Linear(9, 5, bias=False), nn.Linear(5, 3, bias=False)
    )
    if positive:
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
    return net


def test_score_sums_are_conserved_across_layers_of_a_linear_net():
    net = _linear_net()
    params = dict(net.named_parameters())
    scores = synflow_scores(net, params, input_shape=(6,))
    sums = [float(scores[n].sum()) for n in params]
    with torch.no_grad():
        r = float(net.double()(torch.ones(1, 6, dtype=torch.float64)).sum())
    for s in sums:  # every layer's scores add up to R = 1ᵀ(Π|W_l|)1
        assert s == pytest.approx(r, rel=1e-12)


def _by_hand(weights, masks):
    """SynFlow scores of a bias-free linear chain: left_i · |W[i, j]| · right_j."""
    mats = [w.abs().double() * m for w, m in zip(weights, masks)]
    out = []
    for layer in range(len(mats)):
        right = torch.ones(mats[0].shape[1], dtype=torch.float64)
        for w in mats[:layer]:
            right = w @ right
        left = torch.ones(mats[-1].shape[0], dtype=torch.float64)
        for w in reversed(mats[layer + 1 :]):
            left = left @ w
        out.append(left[:, None] * mats[layer] * right[None, :])
    return out


def test_global_threshold_reproduces_iterative_synflow():
    net = _linear_net(positive=False)  # signs are ignored: |θ|
    weights = [p.detach().clone() for p in net.parameters()]
    sparsity, rounds = 0.8, 6
    total = sum(w.numel() for w in weights)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    for k in range(1, rounds + 1):
        scores = torch.cat([s.reshape(-1) for s in _by_hand(weights, masks)])
        n_prune = round((1 - (1 - sparsity) ** (k / rounds)) * total)
        if k == rounds:
            n_prune = round(sparsity * total)
        keep = torch.ones(total, dtype=torch.bool)
        keep[scores.argsort(stable=True)[:n_prune]] = False
        masks = [
            m.reshape(w.shape) for m, w in zip(keep.split([w.numel() for w in weights]), weights)
        ]
    got = prunekit.compute_masks(
        net, sparsity, method="synflow", criterion_options={"rounds": rounds}
    )
    for name, want in zip(got, masks):
        assert torch.equal(got[name], want), name
    assert got.num_pruned == round(sparsity * total)


def test_one_round_equals_one_shot_scores_order():
    net = _linear_net(positive=False)
    params = dict(net.named_parameters())
    raw = synflow_scores(net, params, input_shape=(6,))
    flat = torch.cat([raw[n].reshape(-1) for n in params])
    masks = prunekit.compute_masks(net, 0.5, method="synflow", criterion_options={"rounds": 1})
    kept = torch.cat([masks[n].reshape(-1) for n in params])
    assert flat[~kept].max() <= flat[kept].min()


def test_model_is_restored_and_batchnorm_runs_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = prunekit.select_targets(model)
    train_mode = synflow_scores(model, params)
    model.eval()
    eval_mode = synflow_scores(model, params)
    for n in params:
        torch.testing.assert_close(train_mode[n], eval_mode[n])
        assert train_mode[n].dtype == torch.float64
    model.train()
    masks = prunekit.compute_masks(model, 0.9, method="synflow", criterion_options={"rounds": 10})
    assert masks.num_pruned == round(0.9 * masks.numel)
    assert model.training and model[1].training
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_earlier_masks_stay_pruned_and_count():
    net = _linear_net()
    first = prunekit.compute_masks(net, 0.5, method="magnitude")
    second = prunekit.compute_masks(
        net, 0.8, method="synflow", masks=first, criterion_options={"rounds": 5}
    )
    assert second.is_subset_of(first)
    assert second.num_pruned == round(0.8 * second.numel)


def test_input_shape_inferred_from_data_or_required():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ValueError, match="input_shape"):
        prunekit.compute_masks(conv, 0.5, method="synflow")
    data = [(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))]
    a = prunekit.compute_masks(conv, 0.5, method="synflow", data=data)
    b = prunekit.compute_masks(
        conv, 0.5, method="synflow", criterion_options={"input_shape": (1, 8, 8)}
    )
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_bad_options():
    with pytest.raises(ValueError, match="rounds"):
        create_criterion("synflow", rounds=0)
    with pytest.raises(ValueError, match="input_shape"):
        create_criterion("synflow", input_shape="3x32x32")
    with pytest.raises(TypeError, match="unexpected options"):
        create_criterion("synflow", data_free=True)
    net = _linear_net()
    with pytest.raises(ValueError, match="sparsity"):
        create_criterion("synflow").scores(net, dict(net.named_parameters()))
