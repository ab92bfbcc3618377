"""prune_at_init: masks applied, exact sparsity, and the per-layer densities reported."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.core.at_init import DensityTable, prune_at_init


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g))]


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude", "random", "taylor"])
def test_prune_at_init_reports_the_densities_it_chose(method):
    torch.manual_seed(0)
    model = prunekit.create_model("mlp", in_features=12, hidden=(20, 10), num_classes=3)
    options = {"rounds": 10} if method == "synflow" else None
    masks, table = prune_at_init(model, method, 0.9, _data(), criterion_options=options)
    assert isinstance(table, DensityTable)
    assert masks.num_pruned == round(0.9 * masks.numel)
    assert table.kept == masks.numel - masks.num_pruned
    assert table.density == pytest.approx(1 - masks.sparsity)
    for name, density in table.densities().items():
        assert density == pytest.approx(float(masks[name].float().mean()))
        weight = dict(model.named_parameters())[name]
        assert not weight[~masks[name]].any()
    text = str(table)
    assert "density" in text and "total" in text
    assert table.to_dict()["total"]["kept"] == table.kept
