"""PQ Index and SAP: the index and the pruning amount equal their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.pqi import SAPSchedule, pq_index, pq_index_report, sap_prune_count


def _by_hand(w: torch.Tensor, p=0.5, q=1.0) -> float:
    w = w.double().abs().reshape(-1)
    d = w.numel()
    return 1 - d ** (1 / q - 1 / p) * (w**p).sum() ** (1 / p) / (w**q).sum() ** (1 / q)


def test_pq_index_formula_and_extremes():
    torch.manual_seed(0)
    w = torch.randn(50)
    assert pq_index(w) == pytest.approx(float(_by_hand(w)), rel=1e-12)
    assert pq_index(w, p=1.0, q=2.0) == pytest.approx(float(_by_hand(w, 1.0, 2.0)), rel=1e-12)
    assert pq_index(torch.full((10,), -3.0)) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(10)
    one_hot[3] = 2.0
    assert pq_index(one_hot, masks=torch.ones(10, dtype=torch.bool)) == pytest.approx(0.9)
    assert pq_index(one_hot) == pytest.approx(0.0)  # without masks d counts non-zeros: d = 1
    assert pq_index(torch.zeros(4)) == 0.0
    with pytest.raises(ValueError, match="0 < p < q"):
        pq_index(w, p=1.0, q=0.5)


def test_report_per_layer_and_global():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    masks = prunekit.compute_masks(model, 0.5)
    report = pq_index_report(model, masks)
    kept = {n: p.detach()[masks[n]] for n, p in model.named_parameters() if n in masks}
    for name, values in kept.items():
        assert report.layers[name] == pytest.approx(float(_by_hand(values)), rel=1e-12)
        assert report.kept[name] == values.numel()
    together = torch.cat(list(kept.values()))
    assert report.global_index == pytest.approx(float(_by_hand(together)), rel=1e-12)
    assert report.to_dict()["global"] == report.global_index


@pytest.mark.parametrize("pq", [0.0, 0.05, 0.2, 0.5, 0.95])
@pytest.mark.parametrize("d", [1, 10, 1000, 123457])
def test_sap_amount_matches_formula(d, pq):
    p, q, eta, gamma, beta = 0.5, 1.0, 0.001, 1.2, 0.9
    r = math.ceil(d * (1 + eta) ** (-q / (q - p)) * (1 - pq) ** (q * p / (q - p)))
    c = math.floor(d * min(max(gamma * (1 - r / d), 0.0), beta))
    got = sap_prune_count(d, pq)
    assert (got.keep_bound, got.prune) == (min(r, d), c)
    assert 0 <= got.prune <= math.floor(beta * d)


def test_sap_amount_options_and_errors():
    got = sap_prune_count(100, 0.3, p=0.5, q=2.0, eta_r=0.01, gamma=1.0, beta=0.5)
    r = math.ceil(100 * 1.01 ** (-2 / 1.5) * 0.7 ** (1.0 / 1.5))
    assert got.keep_bound == r and got.prune == math.floor(100 * min(1 - r / 100, 0.5))
    with pytest.raises(ValueError, match="pq"):
        sap_prune_count(10, 1.5)
    with pytest.raises(ValueError, match="beta"):
        sap_prune_count(10, 0.1, beta=2.0)
    with pytest.raises(ValueError, match="scope"):
        SAPSchedule(scope="neuron")


def test_sap_schedule_global_round_prunes_the_formula_amount():
    torch.manual_seed(0)
    model = prunekit.create_model("mlp", in_features=16, hidden=(32, 16), num_classes=4)
    schedule = SAPSchedule()
    masks = None
    for _ in range(3):
        current = masks if masks is not None else MaskSetAll(model)
        report = pq_index_report(model, current)
        expected = sap_prune_count(sum(report.kept.values()), report.global_index).prune
        predicted = schedule.next_sparsity(model, masks)
        before = current.num_pruned
        weights = {n: p.detach().abs().clone() for n, p in model.named_parameters()}
        new = schedule.prune_round(model, masks)
        assert new.num_pruned - before == expected
        assert new.sparsity == pytest.approx(predicted)
        assert new.is_subset_of(current)
        # One global magnitude threshold: every newly pruned |w| <= every kept |w|.
        removed = torch.cat([weights[n][current[n] & ~new[n]] for n in new])
        kept = torch.cat([weights[n][new[n]] for n in new])
        assert removed.max() <= kept.min()
        params = dict(model.named_parameters())
        assert not torch.cat([params[n].detach()[~new[n]] for n in new]).any()
        masks = new
    assert [h["round"] for h in schedule.history] == [1, 2, 3]
    assert schedule.history[-1]["sparsity"] == pytest.approx(masks.sparsity)


def test_sap_schedule_removes_smallest_and_layer_scope_amounts():
    torch.manual_seed(1)
    model = prunekit.create_model("mlp", in_features=16, hidden=(32, 16), num_classes=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    schedule = SAPSchedule(scope="layer")
    plan = schedule.plan(model)
    masks = schedule.prune_round(model)
    for name, amount in plan.items():
        assert int((~masks[name]).sum()) == amount.prune
        expected = sap_prune_count(before[name].numel(), pq_index(before[name]))
        assert amount.prune == expected.prune
        if amount.prune:
            w = before[name].abs()
            assert w[~masks[name]].max() <= w[masks[name]].min()


def MaskSetAll(model):  # noqa: N802 - reads like a constructor in the test
    params = prunekit.select_targets(model)
    return prunekit.MaskSet({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
