"""Each LMO returns a boundary point of its set with the right support and the optimal value."""

from __future__ import annotations

import math

import pytest
import torch

from prunekit.frank_wolfe import (
    GroupKSupportBall,
    KSparsePolytope,
    KSupportBall,
    L1Ball,
    L2Ball,
    LInfBall,
    NuclearBall,
    SpectralKSupportBall,
    create_constraint,
    k_support_norm,
    list_constraints,
)

R = 1.7


def _m(shape=(6, 10), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _inner(v, m):
    return float((v * m).sum())


def test_registry_lists_every_set():
    assert set(list_constraints()) == {
        "l1",
        "l2",
        "linf",
        "k_sparse",
        "k_support",
        "group_k_support",
        "spectral_k_support",
        "nuclear",
    }


def test_l2_lmo_boundary_and_value():
    m = _m()
    c = L2Ball(radius=R).bind([m])
    (v,) = c.lmo([m])
    assert math.isclose(float(v.norm()), R, rel_tol=1e-12)
    assert math.isclose(_inner(v, m), -R * float(m.norm()), rel_tol=1e-12)
    assert math.isclose(c.norm([v]), R, rel_tol=1e-12)


def test_l1_lmo_is_one_sparse():
    m = _m()
    c = L1Ball(radius=R).bind([m])
    (v,) = c.lmo([m])
    assert int((v != 0).sum()) == 1
    assert math.isclose(float(v.abs().sum()), R)
    assert math.isclose(_inner(v, m), -R * float(m.abs().max()), rel_tol=1e-12)


def test_linf_lmo_is_a_corner():
    m = _m()
    c = LInfBall(radius=R).bind([m])
    (v,) = c.lmo([m])
    assert torch.allclose(v.abs(), torch.full_like(v, R))
    assert math.isclose(_inner(v, m), -R * float(m.abs().sum()), rel_tol=1e-12)


@pytest.mark.parametrize("k", [1, 7, 60])
def test_k_sparse_polytope_lmo(k):
    m = _m()
    c = KSparsePolytope(k, radius=R).bind([m])
    (v,) = c.lmo([m])
    assert int((v != 0).sum()) == k
    assert torch.allclose(v[v != 0].abs(), torch.full((k,), R, dtype=v.dtype))
    top = m.abs().flatten().topk(k).values.sum()
    assert math.isclose(_inner(v, m), -R * float(top), rel_tol=1e-12)
    assert math.isclose(c.norm([v]), R, rel_tol=1e-12)


@pytest.mark.parametrize("k", [1, 5, 0.25, 60])
def test_k_support_lmo_exactly_k_nonzeros_norm_r(k):
    m = _m()
    c = KSupportBall(k, radius=R).bind([m])
    kk = c.k
    assert kk == (15 if k == 0.25 else k)
    (v,) = c.lmo([m])
    assert int((v != 0).sum()) == kk
    assert math.isclose(float(v.norm()), R, rel_tol=1e-12)
    # the kept entries are the k largest |m|, with opposite sign
    idx = m.abs().flatten().topk(kk).indices
    assert bool((v.flatten()[idx] * m.flatten()[idx] < 0).all())
    dual = float(m.flatten()[idx].norm())
    assert math.isclose(_inner(v, m), -R * dual, rel_tol=1e-12)
    assert math.isclose(c.norm([v]), R, rel_tol=1e-9)


def test_group_k_support_keeps_exactly_k_filters():
    m = _m((8, 3, 2, 2))
    c = GroupKSupportBall(3, radius=R).bind([m])
    (v,) = c.lmo([m])
    nonzero_filters = v.reshape(8, -1).norm(dim=1) > 0
    assert int(nonzero_filters.sum()) == 3
    filt = m.reshape(8, -1).norm(dim=1)
    assert set(torch.nonzero(nonzero_filters).flatten().tolist()) == set(
        filt.topk(3).indices.tolist()
    )
    assert math.isclose(float(v.norm()), R, rel_tol=1e-12)
    assert math.isclose(_inner(v, m), -R * float(filt.topk(3).values.norm()), rel_tol=1e-12)
    assert math.isclose(c.norm([v]), R, rel_tol=1e-9)


def test_group_k_support_shares_budget_across_tensors():
    a, b = _m((4, 5), 1), _m((6, 5), 2) * 3
    c = GroupKSupportBall(2, radius=R).bind([a, b])
    va, vb = c.lmo([a, b])
    nz = int((va.norm(dim=1) > 0).sum() + (vb.norm(dim=1) > 0).sum())
    assert nz == 2
    assert math.isclose(float(torch.cat([va, vb]).norm()), R, rel_tol=1e-12)


@pytest.mark.parametrize("method", ["exact", "power", "lowrank"])
def test_spectral_k_support_rank_k_frobenius_r(method):
    m = _m((12, 9))
    c = SpectralKSupportBall(3, radius=R, svd_method=method, power_iters=30).bind([m])
    (v,) = c.lmo([m], {})
    s = torch.linalg.svdvals(v)
    assert int((s > 1e-9 * s[0]).sum()) == 3
    assert math.isclose(float(v.norm()), R, rel_tol=1e-9)
    assert math.isclose(c.norm([v]), R, rel_tol=1e-6)
    top = torch.linalg.svdvals(m)[:3]
    assert math.isclose(_inner(v, m), -R * float(top.norm()), rel_tol=1e-5)


def test_spectral_on_conv_weight_flattens_filters():
    m = _m((6, 2, 3, 3))
    c = SpectralKSupportBall(2, radius=R, svd_method="exact").bind([m])
    (v,) = c.lmo([m])
    assert v.shape == m.shape
    assert int((torch.linalg.svdvals(v.reshape(6, -1)) > 1e-9).sum()) == 2


@pytest.mark.parametrize("method", ["exact", "power"])
def test_nuclear_lmo_rank_one(method):
    m = _m((10, 7))
    c = NuclearBall(radius=R, svd_method=method, power_iters=50).bind([m])
    (v,) = c.lmo([m], {})
    s = torch.linalg.svdvals(v)
    assert int((s > 1e-9).sum()) == 1
    assert math.isclose(float(s.sum()), R, rel_tol=1e-9)
    assert math.isclose(_inner(v, m), -R * float(torch.linalg.svdvals(m)[0]), rel_tol=1e-6)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("l1", {}),
        ("l2", {}),
        ("linf", {}),
        ("k_sparse", {"k": 4}),
        ("k_support", {"k": 4}),
        ("group_k_support", {"k": 2}),
        ("spectral_k_support", {"k": 2, "svd_method": "exact"}),
        ("nuclear", {"svd_method": "exact"}),
    ],
)
def test_lmo_beats_random_feasible_points(name, kwargs):
    m = _m((5, 8))
    c = create_constraint(name, radius=R, **kwargs).bind([m])
    (v,) = c.lmo([m])
    assert c.is_feasible([v])
    best = _inner(v, m)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        x = torch.randn(m.shape, generator=gen, dtype=m.dtype)
        c.make_feasible([x])
        assert c.is_feasible([x])
        assert _inner(x, m) >= best - 1e-9


def test_radius_from_diameter_rules():
    w = torch.zeros(4, 25)
    d = 6.0
    assert L2Ball(diameter=d).bind([w]).radius == 3.0
    assert L1Ball(diameter=d).bind([w]).radius == 3.0
    assert math.isclose(LInfBall(diameter=d).bind([w]).radius, 3.0 / 10.0)
    assert math.isclose(KSparsePolytope(9, diameter=d).bind([w]).radius, 1.0)
    assert KSupportBall(9, diameter=d).bind([w]).radius == 3.0
    assert NuclearBall(diameter=d).bind([w]).radius == 3.0
    # and back: the L2 diameter of the set is what was asked
    assert math.isclose(KSparsePolytope(9, radius=1.0).bind([w]).diameter, 6.0)


def test_relaxed_keeps_diameter_and_uses_full_dimension():
    w = torch.zeros(4, 25)
    c = KSparsePolytope(4, diameter=2.0).bind([w])
    full = c.relaxed()
    assert full.k == 100 and math.isclose(full.diameter, 2.0)
    assert math.isclose(full.radius, 2.0 / (2 * 10.0))
    ks = KSupportBall(0.1, radius=1.5).bind([w]).relaxed()
    assert ks.k == 100 and math.isclose(ks.radius, 1.5)


def test_k_support_norm_extremes_and_duality():
    x = _m((40,), 5)
    assert math.isclose(float(k_support_norm(x, 1)), float(x.abs().sum()), rel_tol=1e-12)
    assert math.isclose(float(k_support_norm(x, 40)), float(x.norm()), rel_tol=1e-12)
    sparse = torch.zeros(40, dtype=torch.float64)
    sparse[[1, 7, 30]] = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    assert math.isclose(float(k_support_norm(sparse, 3)), math.sqrt(14.0), rel_tol=1e-12)
    # Hoelder: <x, y> <= ||x||_(k) * ||top_k(y)||_2 for every y
    gen = torch.Generator().manual_seed(9)
    for k in (2, 5, 17):
        nx = float(k_support_norm(x, k))
        for _ in range(10):
            y = torch.randn(40, generator=gen, dtype=torch.float64)
            assert float(x @ y) <= nx * float(y.abs().topk(k).values.norm()) + 1e-9
        # monotone in k: between L2 and L1
        assert float(x.norm()) - 1e-9 <= nx <= float(x.abs().sum()) + 1e-9


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="radius"):
        L2Ball(radius=-1.0)
    with pytest.raises(ValueError, match="exactly one"):
        L2Ball(radius=1.0, diameter=2.0)
    with pytest.raises(ValueError, match="k"):
        KSupportBall(0, radius=1.0)
    with pytest.raises(ValueError, match="k"):
        KSupportBall(1.5, radius=1.0)
    with pytest.raises(ValueError, match="one tensor"):
        NuclearBall(radius=1.0).bind([torch.zeros(3)])
    with pytest.raises(ValueError, match="constraint"):
        create_constraint("l3", radius=1.0)
    with pytest.raises(RuntimeError, match="bind"):
        KSupportBall(2, radius=1.0).lmo([torch.zeros(3)])
