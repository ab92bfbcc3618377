"""Prune-retrain recipes reach each phase's sparsity; controls keep what they promise."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit
from conftest import toy_bundle
from prunekit.core.schedules import IMP
from prunekit.training import (
    PruneSpec,
    TrainSpec,
    count_flops,
    pruning_norm_change,
    random_reinit,
    run_bimp,
    run_gmp,
    run_imp,
    run_one_shot,
    run_scratch,
    run_sparse_training,
    scratch_iterations,
    shuffle_masks,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


TRAIN = TrainSpec(epochs=2, batch_size=20, lr=0.05, lr_schedule="step")


def _check_masks_hold(model, masks):
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert int((params[name][~mask] != 0).sum()) == 0


def test_one_shot():
    model = _model()
    r = run_one_shot(
        model, toy_bundle(), TRAIN, PruneSpec(0.75), retrain_epochs=1, retrain_schedule="allr"
    )
    assert [p.sparsity for p in r.phases] == [pytest.approx(0.75, abs=1 / 360)]
    assert r.dense_iterations == 8 and r.retrain_iterations == 4
    assert 0 < r.phases[0].lr0 <= 0.05
    _check_masks_hold(model, r.masks)
    json.dumps(r.to_dict())


@pytest.mark.parametrize("rewind", ["weights", "lr", "none"])
def test_imp_phases_follow_the_schedule(rewind):
    model = _model()
    r = run_imp(
        model,
        toy_bundle(),
        TRAIN,
        PruneSpec(0.875),
        phases=3,
        rewind=rewind,
        rewind_iteration=2,
        retrain_epochs=1,
    )
    expected = IMP(0.875, 3).targets()
    assert [p.sparsity for p in r.phases] == [pytest.approx(t, abs=1 / 360) for t in expected]
    its = 8 - 2 if rewind == "weights" else 4
    assert [p.retrain_iterations for p in r.phases] == [its] * 3
    _check_masks_hold(model, r.masks)


def test_imp_weight_rewinding_restores_theta_k_for_survivors():
    # With zero retraining iterations impossible, check rewinding directly: rewind to init (k=0)
    # and a zero LR makes retraining a no-op, so the survivors must equal the initial weights.
    init = _model().state_dict()
    model = _model()
    spec = TrainSpec(epochs=2, batch_size=20, lr=0.0, lr_schedule="constant", weight_decay=0.0)
    r = run_imp(model, toy_bundle(), spec, PruneSpec(0.5), phases=2, rewind="weights")
    for name, mask in r.masks.items():
        assert torch.equal(model.state_dict()[name].cpu(), init[name] * mask.cpu())


def test_bimp_splits_the_budget_and_uses_allr():
    model = _model()
    r = run_bimp(model, toy_bundle(), TRAIN, PruneSpec(0.9), phases=3, retrain_epochs=2.5)
    assert [p.retrain_iterations for p in r.phases] == [3, 3, 4]
    assert all(p.retrain_schedule == "allr" for p in r.phases)
    assert r.config["train"]["lr_schedule"] == "linear"
    assert r.phases[-1].sparsity == pytest.approx(0.9, abs=1 / 360)


def test_gmp_reaches_final_sparsity_monotonically():
    model = _model()
    r = run_gmp(
        model,
        toy_bundle(),
        TrainSpec(epochs=5, batch_size=20, lr=0.05),
        PruneSpec(0.8),
        start_fraction=0.1,
        end_fraction=0.6,
        frequency=2,
    )
    traj = [s for _, s in r.config["trajectory"]]
    assert traj == sorted(traj) and traj[-1] == pytest.approx(0.8, abs=1 / 360)
    _check_masks_hold(model, r.masks)


def test_norm_change_for_allr():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
    before = prunekit.MaskSet({"weight": torch.tensor([[True, True, True, False]])})
    after = prunekit.MaskSet({"weight": torch.tensor([[False, True, False, False]])})
    d, s = pruning_norm_change(model, before, after)
    assert d == pytest.approx(3 / 5) and s == pytest.approx(2 / 3)


def test_controls():
    model = _model()
    masks = prunekit.prune(model, 0.7)
    shuffled = shuffle_masks(masks, seed=1)
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {
        n: int(m.sum()) for n, m in masks.items()
    }
    assert any(not torch.equal(shuffled[n], masks[n]) for n in masks)
    before = {n: p.clone() for n, p in model.named_parameters()}
    random_reinit(model, masks, seed=3, factory=_model_unseeded)
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])
    _check_masks_hold(model, masks)
    x = torch.randn(1, 12)
    dense = count_flops(model, x)
    assert dense == 12 * 24 + 24 * 3
    sparse = count_flops(model, x, masks)
    assert sparse == sum(int(m.sum()) for m in masks.values())
    assert scratch_iterations(100, dense, sparse, "E") == 100
    assert scratch_iterations(100, dense, sparse, "B") == 200  # capped at 2x
    assert scratch_iterations(100, 150, 100, "B") == 150
    metrics = run_sparse_training(model, toy_bundle(), TRAIN, masks, iterations=5)
    assert 0.0 <= metrics["test_top1"] <= 1.0
    _check_masks_hold(model, masks)


def _model_unseeded() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def test_scratch_e_and_b():
    masks = prunekit.compute_masks(_model(), 0.8)
    e = run_scratch(_model_unseeded, toy_bundle(), TRAIN, masks, mode="E", seed=1)
    b = run_scratch(_model_unseeded, toy_bundle(), TRAIN, masks, mode="B", seed=1)
    assert e["iterations"] == 8 and b["iterations"] == 16  # 5x fewer MACs, capped at 2x
    assert 0.0 <= b["test_top1"] <= 1.0
