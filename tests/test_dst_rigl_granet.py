"""RigL and GraNet: exact sparsity between updates, no regrowth into positions just removed,
regrown weights and their optimizer state start at zero."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import prunekit
from prunekit.core.allocation import erk_densities
from prunekit.training.sparse_training import (
    GraNet,
    RigL,
    cosine_decay,
    drop_and_regrow,
    gmp_sparsity,
)


def _setup(seed=0, opt="adam"):
    torch.manual_seed(seed)
    model = prunekit.create_model("mlp", in_features=10, hidden=(24, 16), num_classes=4)
    if opt == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g))] * 4
    return model, optimizer, data


def test_drop_and_regrow_by_hand():
    weight = torch.tensor([[0.5, -0.1, 0.0, 0.3], [0.0, 0.2, 0.0, -0.9]])
    mask = weight != 0
    grad = torch.tensor([[9.0, 9.0, 0.4, 9.0], [0.7, 9.0, 0.1, 9.0]])
    new, dropped, grown = drop_and_regrow(weight, grad, mask, 2)
    assert dropped.nonzero().tolist() == [[0, 1], [1, 1]]  # |w| = 0.1 and 0.2
    assert grown.nonzero().tolist() == [[0, 2], [1, 0]]  # |g| = 0.4 and 0.7 among zeros
    assert int(new.sum()) == int(mask.sum())
    # With the zeros excluded there is nothing to regrow into, so nothing is dropped either.
    _, dropped, grown = drop_and_regrow(weight, grad, mask, 2, exclude=~mask)
    assert not dropped.any() and not grown.any()


def _train(model, optimizer, data, scheduler, steps, check):
    proceeded = []
    for step in range(1, steps + 1):
        x, y = data[step % len(data)]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        before = {n: m.clone() for n, m in scheduler.masks.items()}
        weights = {n: p.detach().clone() for n, p in scheduler.params.items()}
        grads = {n: p.grad.clone() for n, p in scheduler.params.items()}
        go = scheduler.step()
        proceeded.append(go)
        if go:
            optimizer.step()
        check(step, go, before, weights, grads)
    return proceeded


def _assert_enforced(scheduler, optimizer):
    for name, param in scheduler.params.items():
        mask = scheduler.masks[name]
        assert not param[~mask].any(), name
        for key, value in optimizer.state.get(param, {}).items():
            if key != "step" and torch.is_tensor(value) and value.shape == param.shape:
                assert not value[~mask].any(), (name, key)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_rigl_keeps_sparsity_exact_and_never_regrows_what_it_dropped(opt):
    model, optimizer, data = _setup(opt=opt)
    rigl = RigL(model, optimizer, sparsity=0.8, t_end=40, delta_t=5, alpha=0.3)
    counts = {n: int(m.sum()) for n, m in rigl.masks.items()}
    total_pruned = rigl.masks.num_pruned
    assert total_pruned == round(0.8 * rigl.masks.numel)
    updates = []

    def check(step, go, before, weights, grads):
        assert go == (step % 5 != 0 or step >= 40)
        assert {n: int(m.sum()) for n, m in rigl.masks.items()} == counts
        assert rigl.masks.num_pruned == total_pruned
        _assert_enforced(rigl, optimizer)
        if go:
            return
        updates.append(step)
        fraction = cosine_decay(step, 0.3, 40)
        for name, param in rigl.params.items():
            dropped, grown = rigl.last_update[name]
            old = before[name]
            assert not (dropped & grown).any()
            assert not (grown & old).any()  # regrowth only into positions inactive before
            assert (dropped <= old).all()
            assert torch.equal(rigl.masks[name], (old & ~dropped) | grown)
            n = int(grown.sum())
            assert n == int(dropped.sum())
            assert n == min(math.floor(fraction * int(old.sum())), int((~old).sum()))
            if n:
                kept = old & ~dropped
                assert weights[name].abs()[dropped].max() <= weights[name].abs()[kept].min()
                others = ~old & ~grown
                if others.any():
                    assert grads[name].abs()[grown].min() >= grads[name].abs()[others].max()
            assert not param[grown].any()  # regrown weights start at zero
            for key, value in optimizer.state.get(param, {}).items():
                if key != "step" and torch.is_tensor(value) and value.shape == param.shape:
                    assert not value[grown].any()  # ... and so does their optimizer state

    _train(model, optimizer, data, rigl, 50, check)
    assert updates == [5, 10, 15, 20, 25, 30, 35]
    assert len(rigl.history) == 7 and rigl.history[0]["regrown"] > 0


def test_rigl_initial_mask_has_erk_densities():
    model, optimizer, _ = _setup()
    rigl = RigL(model, optimizer, sparsity=0.9, t_end=10)
    shapes = {n: p.shape for n, p in rigl.params.items()}
    want = erk_densities(shapes, 0.1)
    for name, mask in rigl.masks.items():
        assert float(mask.float().mean()) == pytest.approx(want[name], abs=1.5 / mask.numel())
        assert not rigl.params[name][~mask].any()


def test_granet_follows_gmp_and_regrows_only_old_zeros():
    model, optimizer, data = _setup(seed=1)
    granet = GraNet(
        model,
        optimizer,
        final_sparsity=0.9,
        initial_sparsity=0.0,
        t_start=4,
        t_prune_end=24,
        t_end=40,
        delta_t=4,
        regrow_fraction=0.5,
    )
    total = granet.masks.numel
    assert granet.masks.num_pruned == 0
    expected = {"pruned": 0}
    updates = []

    def check(step, go, before, weights, grads):
        _assert_enforced(granet, optimizer)
        if go:
            assert granet.masks.num_pruned == expected["pruned"]  # unchanged between updates
            return
        updates.append(step)
        target = gmp_sparsity(step, 0.0, 0.9, 4, 24)
        expected["pruned"] = max(round(target * total), expected["pruned"])
        assert granet.masks.num_pruned == expected["pruned"]
        for name in granet.params:
            dropped, grown = granet.last_update[name]
            assert not (grown & before[name]).any()
            assert not (grown & dropped).any()
            assert torch.equal(granet.masks[name], (before[name] & ~dropped) | grown)

    _train(model, optimizer, data, granet, 48, check)
    assert updates == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert granet.masks.num_pruned == round(0.9 * total)
    assert any(h["regrown"] > 0 for h in granet.history)


def test_granet_reaches_final_sparsity_when_window_is_off_the_grid():
    model, optimizer, data = _setup(seed=2)
    granet = GraNet(
        model, optimizer, final_sparsity=0.8, t_start=2, t_prune_end=13, t_end=13, delta_t=5
    )
    steps = []
    _train(model, optimizer, data, granet, 14, lambda s, go, *a: steps.append(s) if not go else 0)
    assert steps == [2, 7, 12, 13]
    assert granet.masks.num_pruned == round(0.8 * granet.masks.numel)


def test_gmp_and_cosine_formulas():
    assert gmp_sparsity(0, 0.0, 0.9, 0, 100) == 0.0
    assert gmp_sparsity(50, 0.0, 0.9, 0, 100) == pytest.approx(0.9 + (0.0 - 0.9) * 0.5**3)
    assert gmp_sparsity(150, 0.0, 0.9, 0, 100) == 0.9
    assert cosine_decay(0, 0.3, 100) == pytest.approx(0.3)
    assert cosine_decay(50, 0.3, 100) == pytest.approx(0.15)
    assert cosine_decay(100, 0.3, 100) == pytest.approx(0.0)


def test_state_dict_round_trip_and_errors():
    model, optimizer, data = _setup()
    rigl = RigL(model, optimizer, sparsity=0.7, t_end=20, delta_t=2)
    _train(model, optimizer, data, rigl, 4, lambda *a: None)
    state = rigl.state_dict()
    model2, optimizer2, _ = _setup(seed=5)
    other = RigL(model2, optimizer2, sparsity=0.7, t_end=20, delta_t=2, seed=9)
    other.load_state_dict(state)
    assert other.step_count == 4
    assert all(torch.equal(other.masks[n], rigl.masks[n]) for n in rigl.masks)
    rigl.remove()
    other.remove()
    with pytest.raises(ValueError, match="t_end"):
        RigL(model, optimizer, sparsity=0.5, t_end=0)
    with pytest.raises(ValueError, match="alpha"):
        RigL(model, optimizer, sparsity=0.5, t_end=10, alpha=1.5)
    with pytest.raises(ValueError, match="sparsity"):
        RigL(model, optimizer, t_end=10)
    with pytest.raises(ValueError, match="initial_sparsity"):
        GraNet(model, optimizer, final_sparsity=0.5, initial_sparsity=0.8, t_prune_end=5, t_end=9)
    with pytest.raises(TypeError, match="optimizer"):
        RigL(model, "sgd", sparsity=0.5, t_end=10)
    fresh, opt, _ = _setup()
    rigl = RigL(fresh, opt, sparsity=0.5, t_end=10, delta_t=1)
    with pytest.raises(RuntimeError, match="backward"):
        rigl.step()
