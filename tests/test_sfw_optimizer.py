"""The SFW optimizer: the update rule by hand, feasibility over steps, delay, groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.frank_wolfe import (
    SFW,
    KSupportBall,
    L2Ball,
    constraints_for_model,
    create_constraint,
    expected_init_norm,
)


def _toy(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    return model, x, y


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def test_one_step_matches_the_formula():
    w = nn.Parameter(torch.tensor([3.0, -1.0, 0.5, 2.0]))
    c = KSupportBall(2, radius=5.0)
    opt = SFW([{"params": [w], "constraint": c}], lr=0.5, momentum=0.0, rescale=None)
    w.grad = torch.tensor([1.0, 0.2, -2.0, 0.1])
    before = w.detach().clone()
    opt.step()
    # top-2 |g| are entries 2 (-2.0) and 0 (1.0); v = -5 * g_top / ||g_top||
    v = torch.tensor([-5.0 / math.sqrt(5.0), 0.0, 10.0 / math.sqrt(5.0), 0.0])
    assert torch.allclose(w.detach(), 0.5 * before + 0.5 * v)


def test_momentum_and_gradient_rescaling_by_hand():
    w = nn.Parameter(torch.tensor([1.0, 0.0]))
    opt = SFW([{"params": [w], "constraint": L2Ball(radius=2.0)}], lr=0.3, momentum=0.9)
    w.grad = torch.tensor([0.0, 1.0])
    opt.step()  # m = g (first step)
    m = torch.tensor([0.0, 1.0])
    v = -2.0 * m / m.norm()
    theta0 = torch.tensor([1.0, 0.0])
    eta = min(0.3 * float(m.norm()) / float((theta0 - v).norm()), 1.0)
    theta1 = (1 - eta) * theta0 + eta * v
    assert torch.allclose(w.detach(), theta1, atol=1e-6)
    assert math.isclose(opt.param_groups[0]["last_eta"], eta, rel_tol=1e-6)
    w.grad = torch.tensor([1.0, 0.0])
    opt.step()  # m = 0.9 m + 0.1 g
    m = 0.9 * m + 0.1 * torch.tensor([1.0, 0.0])
    assert torch.allclose(opt.state[w]["momentum_buffer"], m)
    v = -2.0 * m / m.norm()
    eta = min(0.3 * float(m.norm()) / float((theta1 - v).norm()), 1.0)
    assert torch.allclose(w.detach(), (1 - eta) * theta1 + eta * v, atol=1e-6)


def test_diameter_rescale_and_clipping():
    w = nn.Parameter(torch.zeros(3))
    opt = SFW([{"params": [w], "constraint": L2Ball(radius=1.0)}], lr=1.0, rescale="diameter")
    w.grad = torch.tensor([1.0, 0.0, 0.0])
    opt.step()
    assert math.isclose(opt.param_groups[0]["last_eta"], 0.5)  # lr / D, D = 2
    big = SFW([{"params": [w], "constraint": L2Ball(radius=1.0)}], lr=100.0, rescale="gradient")
    w.grad = torch.tensor([0.0, 5.0, 0.0])
    big.step()
    assert big.param_groups[0]["last_eta"] == 1.0
    assert torch.allclose(w.detach(), torch.tensor([0.0, -1.0, 0.0]))


@pytest.mark.parametrize(
    "kind,k",
    [
        ("l1", None),
        ("l2", None),
        ("linf", None),
        ("k_sparse", 0.2),
        ("k_support", 0.2),
        ("group_k_support", 0.5),
        ("spectral_k_support", 0.5),
        ("nuclear", None),
    ],
)
def test_iterates_stay_feasible_and_loss_drops(kind, k):
    model, x, y = _toy()
    groups = constraints_for_model(model, kind, k=k, tau=5.0, init_samples=3)
    opt = SFW(groups, lr=0.3, momentum=0.9)
    opt.make_feasible()
    first = float(_loss(model, x, y).detach())
    for _ in range(25):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        assert all(r is None or r <= 1 + 1e-5 for r in opt.feasibility())
    assert float(_loss(model, x, y).detach()) < first


def test_make_feasible_rescales_into_the_set():
    w = nn.Parameter(torch.full((10,), 3.0))
    opt = SFW([{"params": [w], "constraint": KSupportBall(3, radius=1.0)}])
    (factor,) = opt.make_feasible()
    assert factor < 1
    assert math.isclose(opt.feasibility()[0], 1.0, rel_tol=1e-6)
    assert opt.make_feasible() == [1.0]  # already inside


def test_k_delay_uses_full_ball_then_switches():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(50) * 0.01)
    c = KSupportBall(5, radius=1.0)
    opt = SFW([{"params": [w], "constraint": c}], lr=0.5, momentum=0.0, rescale=None, k_delay=3)
    for step in range(5):
        w.grad = torch.randn(50)
        opt.step()
        nnz = int((w.detach() != 0).sum())
        if step < 2:
            # the full-dimensional ball: v is dense, so the iterate is dense
            assert opt.active_constraint(opt.param_groups[0]).k == 50
            assert nnz == 50
        else:
            assert opt.active_constraint(opt.param_groups[0]).k == 5
            assert opt.feasibility()[0] <= 1 + 1e-6


def test_unconstrained_group_takes_sgd_step():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = SFW([{"params": [w], "constraint": None, "lr": 0.1}], momentum=0.0)
    w.grad = torch.tensor([1.0, -1.0])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([0.9, 2.1]))
    assert opt.feasibility() == [None]


def test_zero_gradient_leaves_parameters():
    w = nn.Parameter(torch.tensor([0.3, 0.1]))
    opt = SFW([{"params": [w], "constraint": L2Ball(radius=1.0)}], rescale=None, lr=0.5)
    w.grad = torch.zeros(2)
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([0.3, 0.1]))


def test_constraints_for_model_radius_rule_and_groups():
    model, _, _ = _toy()
    groups = constraints_for_model(model, "k_support", k_fraction=0.1, tau=3.0, init_samples=4)
    names = [g["names"][0] for g in groups]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    first = groups[0]["constraint"]
    assert isinstance(first, KSupportBall) and first.k == 7  # round(0.1 * 72)
    e = expected_init_norm(model[0], "weight", samples=4)
    assert math.isclose(first.diameter, 2 * 3.0 * e)
    assert math.isclose(first.radius, 3.0 * e)
    assert isinstance(groups[1]["constraint"], L2Ball)
    free = constraints_for_model(model, "l2", others=None, others_lr=0.01, init_samples=1)
    assert free[1]["constraint"] is None and free[1]["lr"] == 0.01
    fixed = constraints_for_model(model, "nuclear", radius=2.5, init_samples=1)
    assert fixed[0]["constraint"].radius == 2.5


def test_expected_init_norm_leaves_model_and_rng_untouched():
    model, _, _ = _toy()
    before = model[0].weight.detach().clone()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    expected_init_norm(model[0], "weight", samples=3)
    assert torch.equal(torch.rand(1), expected)
    assert torch.equal(model[0].weight.detach(), before)


def test_bad_arguments():
    w = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="momentum"):
        SFW([w], constraint=L2Ball(radius=1.0), momentum=1.0)
    with pytest.raises(ValueError, match="rescale"):
        SFW([w], constraint=L2Ball(radius=1.0), rescale="foo")
    with pytest.raises(ValueError, match="lr"):
        SFW([w], constraint=L2Ball(radius=1.0), rescale=None, lr=2.0)
    with pytest.raises(TypeError, match="constraint"):
        SFW([w], constraint="l2")
    model, _, _ = _toy()
    with pytest.raises(ValueError, match="k"):
        constraints_for_model(model, "k_support")
    with pytest.raises(ValueError, match="kind"):
        constraints_for_model(model, "ball")
    with pytest.raises(ValueError, match="no k"):
        constraints_for_model(model, "l2", k=3)


def test_shared_constraint_object_binds_per_group():
    a, b = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(9))
    c = create_constraint("k_support", k=0.5, radius=1.0)
    opt = SFW([{"params": [a]}, {"params": [b]}], constraint=c)
    assert [g["constraint"].k for g in opt.param_groups] == [2, 4]


def test_state_dict_round_trip_keeps_constraints():
    model, x, y = _toy()
    groups = constraints_for_model(model, "k_support", k=5, tau=5.0, init_samples=1)
    opt = SFW(groups, lr=0.3, momentum=0.9, k_delay=2)
    for _ in range(3):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    sd = opt.state_dict()
    assert all("constraint" not in g and "relaxed" not in g for g in sd["param_groups"])
    assert [g["step"] for g in sd["param_groups"]] == [3, 3, 3, 3]
    clone = SFW(constraints_for_model(model, "k_support", k=5, tau=5.0, init_samples=1), lr=0.3)
    clone.load_state_dict(sd)
    assert all(g["constraint"] is not None for g in clone.param_groups)
    assert clone.param_groups[0]["step"] == 3 and clone.param_groups[0]["k_delay"] == 2
    p = clone.param_groups[0]["params"][0]
    assert torch.equal(clone.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_global_scope_one_group_over_all_targets():
    model, x, y = _toy()
    groups = constraints_for_model(
        model, "k_support", k=10, tau=2.0, init_samples=3, scope="global"
    )
    assert [g["names"] for g in groups] == [["0.weight", "2.weight"], ["0.bias"], ["2.bias"]]
    c = groups[0]["constraint"]
    assert c.k == 10 and c.n == 72 + 36
    e0 = expected_init_norm(model[0], "weight", samples=3)
    e2 = expected_init_norm(model[2], "weight", samples=3)
    assert math.isclose(c.diameter, 2 * 2.0 * math.sqrt(e0**2 + e2**2))
    opt = SFW(groups, lr=0.5)
    opt.make_feasible()
    for _ in range(5):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    assert all(r is None or r <= 1 + 1e-5 for r in opt.feasibility())
    with pytest.raises(ValueError, match="scope"):
        constraints_for_model(model, "nuclear", scope="global")


def test_fast_gradient_rescale():
    w = nn.Parameter(torch.zeros(2))
    opt = SFW(
        [{"params": [w], "constraint": L2Ball(radius=4.0)}],
        lr=0.5,
        momentum=0.0,
        rescale="fast_gradient",
    )
    w.grad = torch.tensor([3.0, 4.0])
    opt.step()
    eta = 0.5 * 5.0 / 4.0  # lr * ||m|| / (D / 2)
    assert math.isclose(opt.param_groups[0]["last_eta"], eta)
    assert torch.allclose(w.detach(), eta * torch.tensor([-2.4, -3.2]))
