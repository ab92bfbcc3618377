"""run_soup_phase: ingredients, soups, ensemble, resumption and parallel workers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.training.soups import ingredient_variants, run_soup_phase

_G = torch.Generator().manual_seed(0)
X = torch.randn(192, 6, generator=_G)
Y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.5).long()
TRAIN = [(X[i : i + 32], Y[i : i + 32]) for i in range(0, 128, 32)]
VAL = [(X[128:], Y[128:])]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 3))


def retrain(model: nn.Module, masks, variant: dict) -> dict:
    """A tiny retraining loop: seeded batch order, the variant's weight decay and length."""
    gen = torch.Generator().manual_seed(int(variant["seed"]))
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=variant.get("weight_decay", 0.0)
    )
    model.train()
    with masks.attach(opt, model):
        for _ in range(int(variant.get("epochs", 3))):
            for j in torch.randperm(len(TRAIN), generator=gen).tolist():
                x, y = TRAIN[j]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    return model.state_dict()


def _pruned():
    model = make_model()
    masks = prunekit.prune(model, 0.7)
    return model, masks


def test_phase_reports_and_keeps_masks(tmp_path):
    model, masks = _pruned()
    variants = ingredient_variants({"seed": 0, "epochs": 3}, "seed", 3)
    res = run_soup_phase(model, masks, retrain, variants, VAL, bn_data=TRAIN, out_dir=tmp_path)
    assert len(res.ingredient_accuracy) == 3
    assert res.greedy_accuracy >= res.best_ingredient_accuracy
    assert res.greedy_ingredients[0] == max(range(3), key=lambda i: res.ingredient_accuracy[i])
    assert 0.0 <= res.ensemble_accuracy <= 1.0 and 0.0 <= res.uniform_accuracy <= 1.0
    assert res.soup_sparsity["uniform"] == pytest.approx(masks.sparsity, abs=0)
    assert res.soup_sparsity["greedy"] == pytest.approx(masks.sparsity, abs=0)
    # the model now holds the greedy soup and still has the mask
    for name, mask in masks.items():
        assert bool((dict(model.named_parameters())[name][~mask] == 0).all())
    for fname in ("uniform_soup.safetensors", "greedy_soup.safetensors", "soup_phase.json"):
        assert (tmp_path / fname).is_file()
    assert res.resumed == []


def test_phase_resumes_finished_ingredients(tmp_path):
    model, masks = _pruned()
    variants = ingredient_variants({"seed": 0, "epochs": 2}, "seed", 3)
    calls = []

    def counting(m, mk, v):
        calls.append(v["ingredient"])
        return retrain(m, mk, v)

    first = run_soup_phase(
        model, masks, counting, variants, VAL, bn_data=TRAIN, out_dir=tmp_path, select=None
    )
    assert calls == [0, 1, 2]
    (tmp_path / "ingredient_001.safetensors").unlink()
    calls.clear()
    second = run_soup_phase(
        model, masks, counting, variants, VAL, bn_data=TRAIN, out_dir=tmp_path, select=None
    )
    assert calls == [1]
    assert second.resumed == [0, 2]
    assert second.ingredient_accuracy == first.ingredient_accuracy
    other = ingredient_variants({"seed": 9, "epochs": 2}, "seed", 3)
    with pytest.raises(ValueError, match="variant"):
        run_soup_phase(model, masks, counting, other, VAL, bn_data=TRAIN, out_dir=tmp_path)


@pytest.mark.slow
def test_phase_in_worker_processes_matches_sequential(tmp_path):
    model, masks = _pruned()
    variants = ingredient_variants({"seed": 0, "epochs": 2}, "seed", 2)
    seq = run_soup_phase(model, masks, retrain, variants, VAL, bn_data=TRAIN, select=None)
    par = run_soup_phase(
        model,
        masks,
        retrain,
        variants,
        VAL,
        bn_data=TRAIN,
        workers=2,
        out_dir=tmp_path,
        select=None,
    )
    assert (tmp_path / "ingredient_000.safetensors").is_file()
    assert (tmp_path / "ingredient_001.safetensors").is_file()
    for key, value in seq.uniform_state_dict.items():
        assert torch.allclose(value.float(), par.uniform_state_dict[key].float(), atol=1e-5), key


def test_phase_argument_errors():
    model, masks = _pruned()
    variants = ingredient_variants({"seed": 0}, "seed", 2)
    with pytest.raises(ValueError, match="bn_data"):
        run_soup_phase(model, masks, retrain, variants, VAL)
    with pytest.raises(ValueError, match="workers"):
        run_soup_phase(model, masks, retrain, variants, VAL, bn_data=TRAIN, workers=0)
    with pytest.raises(TypeError, match="val_data"):
        run_soup_phase(model, masks, retrain, variants, iter(VAL), bn_data=TRAIN)
    with pytest.raises(ValueError, match="pruned entries"):

        def leaky(m, mk, v):
            sd = m.state_dict()
            sd["0.weight"].fill_(1.0)
            return sd

        run_soup_phase(model, masks, leaky, variants, VAL, bn_data=TRAIN)


def test_phase_shares_ingredients_between_ranks(tmp_path):
    model, masks = _pruned()
    variants = ingredient_variants({"seed": 0, "epochs": 2}, "seed", 3)
    calls = []

    def counting(m, mk, v):
        calls.append(v["ingredient"])
        return retrain(m, mk, v)

    # rank 1 of 2 trains ingredient 1, then finds 0 and 2 missing (rank 0 has not run yet)
    with pytest.raises(RuntimeError, match=r"ingredients \[0, 2\]"):
        run_soup_phase(
            model,
            masks,
            counting,
            variants,
            VAL,
            bn_data=TRAIN,
            out_dir=tmp_path,
            rank=1,
            world_size=2,
            select=None,
        )
    assert calls == [1]
    calls.clear()
    res = run_soup_phase(
        model,
        masks,
        counting,
        variants,
        VAL,
        bn_data=TRAIN,
        out_dir=tmp_path,
        rank=0,
        world_size=2,
        select=None,
    )
    assert calls == [0, 2]
    assert res.resumed == [1] and len(res.ingredient_accuracy) == 3
    assert (tmp_path / "greedy_soup.safetensors").is_file()
    with pytest.raises(ValueError, match="rank"):
        run_soup_phase(
            model,
            masks,
            counting,
            variants,
            VAL,
            bn_data=TRAIN,
            out_dir=tmp_path,
            rank=2,
            world_size=2,
        )
    with pytest.raises(ValueError, match="out_dir"):
        run_soup_phase(model, masks, counting, variants, VAL, bn_data=TRAIN, rank=0, world_size=2)
