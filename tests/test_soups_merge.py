"""Soup building blocks: averaging, greedy selection, masks, BatchNorm recalibration, ensembles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.masks import MaskSet
from prunekit.training.soups import (
    check_masks,
    greedy_soup,
    ingredient_variants,
    prediction_ensemble,
    recalibrate_batchnorm,
    state_dict_sparsity,
    uniform_soup,
)


def _mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def test_uniform_soup_is_the_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, -2.0]), "n": torch.tensor(9)}
    soup = uniform_soup([a, b])
    assert torch.equal(soup["w"], torch.tensor([2.0, 0.0]))
    assert int(soup["n"]) == 7  # integer buffers come from the first ingredient
    assert torch.equal(uniform_soup([a, b], weights=[0.25, 0.75])["w"], torch.tensor([2.5, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        uniform_soup([a, {"w": torch.zeros(3), "n": torch.tensor(1)}])
    with pytest.raises(ValueError, match="at least one"):
        uniform_soup([])


def test_soup_keeps_the_shared_masks_exactly():
    base = _mlp()
    masks = prunekit.prune(base, 0.8)
    ingredients = []
    for seed in range(4):
        m = _mlp(seed)
        masks.apply(m)
        ingredients.append(m.state_dict())
    soup = uniform_soup(ingredients)
    check_masks(soup, masks)
    for name, mask in masks.items():
        assert bool((soup[name][~mask] == 0).all())
        # every kept entry is the exact mean of the ingredients
        stack = torch.stack([sd[name] for sd in ingredients]).double().mean(0).float()
        assert torch.equal(soup[name], stack)
    assert state_dict_sparsity(soup, masks) == pytest.approx(masks.sparsity, abs=0)


def test_check_masks_names_the_broken_tensor():
    model = _mlp()
    masks = prunekit.prune(model, 0.5)
    sd = model.state_dict()
    sd["0.weight"][~masks["0.weight"]] = 1.0
    with pytest.raises(ValueError, match="0.weight"):
        check_masks(sd, masks)


def test_greedy_soup_by_hand():
    cands = [{"w": torch.tensor([0.9])}, {"w": torch.tensor([1.3])}, {"w": torch.tensor([0.2])}]

    def acc(sd):
        return -abs(float(sd["w"]) - 1.0)

    res = greedy_soup(cands, acc)
    assert res.ingredients == [0, 1]  # 0.2 would pull the mean to 0.8 and lower the score
    assert float(res.state_dict["w"]) == pytest.approx(1.1)
    assert res.accuracy == pytest.approx(-0.1)
    assert [h[2] for h in res.history] == [True, True, False]


def test_greedy_soup_never_worse_than_its_first_ingredient():
    torch.manual_seed(0)
    x, y = torch.randn(120, 5), torch.randint(0, 3, (120,))
    model = _mlp()
    masks = prunekit.prune(model, 0.5)

    def evaluate(sd):
        model.load_state_dict(sd)
        model.eval()
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    for trial in range(3):
        cands = []
        for seed in range(5):
            m = _mlp(10 * trial + seed)
            masks.apply(m)
            cands.append(m.state_dict())
        res = greedy_soup(cands, evaluate)
        assert res.ingredients[0] == max(range(5), key=lambda i: res.candidate_accuracy[i])
        assert res.accuracy >= max(res.candidate_accuracy)
        assert evaluate(res.state_dict) == res.accuracy
        check_masks(res.state_dict, masks)


def test_recalibrate_batchnorm_changes_running_stats_only():
    model = _mlp(bn=True)
    model.eval()
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    bn.momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    batches = [(torch.randn(20, 5), torch.zeros(20, dtype=torch.long)) for _ in range(4)]
    seen = recalibrate_batchnorm(model, batches)
    assert seen == 4
    assert not model.training and not any(m.training for m in model.modules())
    assert bn.momentum == 0.3
    after = model.state_dict()
    stats = {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for key in before:
        if key in stats:
            assert not torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before[key], after[key]), key
    # cumulative average of the batch statistics of the BN input
    with torch.no_grad():
        feats = [model[0](b[0]) for b in batches]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-5)
    assert int(bn.num_batches_tracked) == 4


def test_recalibrate_batchnorm_limits_and_modes():
    model = _mlp(bn=True)
    model.train()
    batches = [torch.randn(8, 5) for _ in range(10)]
    assert recalibrate_batchnorm(model, batches, num_batches=3) == 3
    assert model.training
    assert recalibrate_batchnorm(model, batches, fraction=0.2) == 2
    assert recalibrate_batchnorm(_mlp(), batches) == 0  # no BatchNorm: nothing to do
    with pytest.raises(ValueError, match="fraction"):
        recalibrate_batchnorm(model, batches, fraction=1.5)


def test_prediction_ensemble_averages_softmax():
    torch.manual_seed(0)
    models = [_mlp(s) for s in range(3)]
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    data = [(x[:25], y[:25]), (x[25:], y[25:])]
    with torch.no_grad():
        for m in models:
            m.eval()
        probs = sum(torch.softmax(m(x), -1) for m in models) / 3
    expected = float((probs.argmax(1) == y).float().mean())
    for m in models:
        m.train()
    assert prediction_ensemble(models, data) == pytest.approx(expected)
    assert all(m.training for m in models)


def test_ingredient_variants():
    base = {"seed": 4, "weight_decay": 1e-4, "epochs": 8, "lr": 0.1}
    seeds = ingredient_variants(base, "seed", 3)
    assert [v["seed"] for v in seeds] == [4, 5, 6]
    assert [v["ingredient"] for v in seeds] == [0, 1, 2]
    assert all(v["lr"] == 0.1 for v in seeds)
    wds = ingredient_variants(base, "weight_decay", 3)
    assert [v["weight_decay"] for v in wds] == pytest.approx([5e-5, 1e-4, 2e-4])
    assert all(v["seed"] == 4 for v in wds)
    lengths = ingredient_variants(base, "length", 3)
    assert [v["epochs"] for v in lengths] == [6, 8, 10]
    sched = ingredient_variants(base, "lr_schedule", 5)
    assert [v["lr_schedule"] for v in sched] == ["llr", "clr", "slr", "ft", "llr"]
    custom = ingredient_variants(base, "length", 2, values=[3, 5], key="steps")
    assert [v["steps"] for v in custom] == [3, 5]
    assert base == {"seed": 4, "weight_decay": 1e-4, "epochs": 8, "lr": 0.1}
    with pytest.raises(ValueError, match="vary"):
        ingredient_variants(base, "dropout", 2)
    with pytest.raises(ValueError, match="values"):
        ingredient_variants(base, "seed", 2, values=[1])
    with pytest.raises(ValueError, match="epochs"):
        ingredient_variants({}, "length", 2)


def test_masks_survive_enforced_retraining_soup():
    """End to end on a tiny problem: retrain with the mask attached, soup, mask intact."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    base = _mlp()
    masks: MaskSet = prunekit.prune(base, 0.9)
    sds = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = _mlp()
        m.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        with masks.attach(opt, m):
            for _ in range(5):
                opt.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                opt.step()
        sds.append(m.state_dict())
    soup = uniform_soup(sds)
    check_masks(soup, masks)
    assert state_dict_sparsity(soup, masks) == masks.sparsity
