"""run_at_init: prune the untrained network with a criterion, train it sparse, report densities."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit
from conftest import toy_bundle
from prunekit.recipes.methods.at_init import ShuffledBatches
from prunekit.training import TrainSpec, run_at_init


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3))


TRAIN = TrainSpec(epochs=2, batch_size=16, lr=0.05, lr_schedule="cosine")


@pytest.mark.parametrize(
    "method, options",
    [("snip", None), ("grasp", None), ("synflow", {"rounds": 5}), ("magnitude", None)],
)
def test_reported_densities_are_the_masks(method, options):
    model = _model()
    result = run_at_init(model, toy_bundle(), TRAIN, method, 0.9, criterion_options=options)
    masks = result.masks
    assert masks.num_pruned == round(0.9 * masks.numel)
    densities = result.details["densities"]
    assert set(densities) == set(masks)
    for name, mask in masks.items():
        assert densities[name] == int(mask.sum()) / mask.numel()
        assert not dict(model.named_parameters())[name][~mask].any()  # still pruned after training
    table = result.details["density_table"]
    assert table["total"]["kept"] == masks.numel - masks.num_pruned
    assert result.recipe == f"at_init_{method}" and result.retrain_iterations > 0
    json.dumps(result.to_dict())


def test_the_mask_is_the_criterion_on_the_untrained_network():
    # Scoring happens before any training: the same criterion on a fresh copy, fed the same
    # batches, chooses the same mask.
    bundle = toy_bundle()
    result = run_at_init(_model(), bundle, TRAIN, "snip", 0.8, num_batches=2)
    batches = ShuffledBatches(bundle.train, TRAIN.batch_size, TRAIN.seed)
    expected = prunekit.compute_masks(
        _model(), 0.8, method="snip", data=batches, criterion_options={"num_batches": 2}
    )
    for name, mask in expected.items():
        assert torch.equal(result.masks[name].cpu(), mask)  # the masks follow the trained model


def test_shuffled_batches_cover_the_data_once():
    data = toy_bundle().train
    batches = list(ShuffledBatches(data, 30, seed=1))
    assert [len(b[0]) for b in batches] == [30, 30, 20]
    seen = torch.cat([b[0] for b in batches])
    assert torch.equal(seen[seen[:, 0].argsort()], data.x[data.x[:, 0].argsort()])
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(data, 0)
