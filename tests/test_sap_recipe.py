"""run_sap prunes what SAP's formula says each round; run_imp logs the PQ Index per phase."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import toy_bundle
from prunekit.core.masks import MaskSet
from prunekit.core.pqi import pq_index_report, sap_prune_count
from prunekit.core.scores import ElementwiseScores
from prunekit.core.selection import keep_masks_lowest_pruned
from prunekit.training import PruneSpec, TrainSpec, run_imp, run_sap


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))


TRAIN = TrainSpec(epochs=1, batch_size=20, lr=0.05, lr_schedule="cosine")


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_round_amounts_follow_the_formula(scope):
    result = run_sap(_model(), toy_bundle(), TRAIN, rounds=3, scope=scope, retrain_epochs=1)
    kept = None
    for entry in result.details["rounds"]:
        amounts = entry["prune"]
        keys = ["global"] if scope == "global" else list(entry["layer_pq_index"])
        assert set(amounts) == set(keys)
        for key in keys:
            pq = entry["pq_index"] if key == "global" else entry["layer_pq_index"][key]
            expected = sap_prune_count(entry["kept"][key], pq)
            assert amounts[key] == expected.prune
            assert entry["keep_bound"][key] == expected.keep_bound
        total_kept = sum(entry["kept"].values())
        if kept is not None:
            assert total_kept == kept  # what the previous round left
        kept = total_kept - sum(amounts.values())
        assert entry["sparsity"] == pytest.approx(1 - kept / result.masks.numel)
    assert result.masks.numel - result.masks.num_pruned == kept
    assert [p.sparsity for p in result.phases] == [e["sparsity"] for e in result.details["rounds"]]
    json.dumps(result.to_dict())


def test_without_retraining_matches_a_hand_computed_sap():
    model = _model()
    reference = copy.deepcopy(model)
    result = run_sap(model, toy_bundle(), TRAIN, rounds=3, retrain_epochs=0, pretrained=True)
    # By hand: PQ Index -> SAP count -> prune that many smallest magnitudes, three times.
    params = {n: p for n, p in reference.named_parameters() if n.endswith("weight")}
    masks = MaskSet({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
    for entry in result.details["rounds"]:
        report = pq_index_report(reference, masks)
        amount = sap_prune_count(masks.numel - masks.num_pruned, report.global_index)
        assert entry["pq_index"] == pytest.approx(report.global_index, abs=1e-12)
        assert entry["prune"]["global"] == amount.prune
        k = masks.num_pruned + amount.prune
        scores = ElementwiseScores(params, torch.abs)
        masks = MaskSet(keep_masks_lowest_pruned(scores, list(params), k, dict(masks.items())))
        masks.apply(reference)
    for name, mask in masks.items():
        assert torch.equal(result.masks[name], mask)


def test_allr_retraining_runs_and_keeps_masks():
    model = _model()
    result = run_sap(
        model, toy_bundle(), TRAIN, rounds=2, retrain_epochs=1, retrain_schedule="allr"
    )
    params = dict(model.named_parameters())
    for name, mask in result.masks.items():
        assert not params[name][~mask].any()
    assert all(p.lr0 > 0 for p in result.phases)


def test_imp_logs_pq_index_per_phase():
    model = _model()
    prune = PruneSpec(sparsity=0.8)
    result = run_imp(model, toy_bundle(), TRAIN, prune, phases=2, rewind="lr", log_pq_index=True)
    log = result.details["pq_index"]
    assert [e["phase"] for e in log] == [0, 1, 2]
    assert log[0]["sparsity"] == 0.0
    assert [e["sparsity"] for e in log[1:]] == [p.sparsity for p in result.phases]
    final = pq_index_report(model, result.masks)
    assert log[-1]["global"] == final.global_index and log[-1]["layers"] == final.layers
    assert log[-1]["test_top1"] == result.final["test_top1"]
    json.dumps(result.to_dict())
    plain = run_imp(_model(), toy_bundle(), TRAIN, prune, phases=2, rewind="lr")
    assert plain.details == {}
