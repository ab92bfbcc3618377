"""Compressing after training: magnitude, filter norm, truncated SVD (and factorisation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.frank_wolfe import low_rank, prune_filters, prune_magnitude, rank_compression


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(8, 6, 3, padding=1, stride=2),
        nn.Flatten(),
        nn.Linear(6 * 5, 4),
    )


def test_prune_magnitude_exact_sparsity():
    model = _cnn()
    masks = prune_magnitude(model, 0.75)
    assert masks.sparsity == pytest.approx(0.75, abs=1e-9)
    masks.validate(model)


def test_prune_filters_zeroes_whole_lowest_filters():
    model = _cnn()
    norms = model[0].weight.detach().reshape(8, -1).norm(dim=1)
    masks = prune_filters(model, 0.5)
    w = model[0].weight.detach()
    kept_rows = w.reshape(8, -1).abs().sum(1) > 0
    assert int(kept_rows.sum()) == 4
    assert set(torch.nonzero(kept_rows).flatten().tolist()) == set(norms.topk(4).indices.tolist())
    m = masks["0.weight"]
    assert bool((m.reshape(8, -1).all(1) | ~m.reshape(8, -1).any(1)).all())  # whole filters
    assert int((masks["4.weight"].reshape(4, -1).any(1)).sum()) == 2


def test_prune_filters_global_never_empties_a_layer():
    model = _cnn()
    with torch.no_grad():
        model[4].weight.mul_(1e-6)
    masks = prune_filters(model, 0.5, allocation="global")
    for name, m in masks.items():
        assert bool(m.reshape(m.shape[0], -1).any(1).any()), name


def test_low_rank_in_place_is_best_rank_r():
    model = _cnn()
    w = model[4].weight.detach().clone()
    res = low_rank(model, rank=2)
    assert res.ranks["4.weight"] == 2
    new = model[4].weight.detach()
    assert int(torch.linalg.matrix_rank(new)) == 2
    u, s, vh = torch.linalg.svd(w)
    assert torch.allclose(new, (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)
    assert res.params_after == res.params_before


def test_low_rank_factorize_matches_in_place():
    model = _cnn()
    x = torch.randn(5, 2, 10)
    reference = _cnn()
    reference.load_state_dict(model.state_dict())
    low_rank(reference, rank=1)
    res = low_rank(model, rank=1, factorize=True)
    assert set(res.factorized) == {"0.weight", "2.weight", "4.weight"}
    assert isinstance(model[4], nn.Sequential) and model[4][0].out_features == 1
    assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert rank_compression(res) < 1.0


def test_low_rank_energy_and_fraction():
    model = _cnn()
    res = low_rank(model, energy=1.0)
    assert res.ranks["4.weight"] == 4
    model = _cnn()
    res = low_rank(model, rank_fraction=0.5)
    assert res.ranks == {"0.weight": 3, "2.weight": 3, "4.weight": 2}
    with pytest.raises(ValueError, match="exactly one"):
        low_rank(model)
    with pytest.raises(ValueError, match="rank"):
        low_rank(model, rank=0)
