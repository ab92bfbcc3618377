"""Zoo models remember how they were built, so saving a pruned one needs no factory argument."""

from __future__ import annotations

import torch

import prunekit
from prunekit import structured


def test_save_pruned_zoo_model_without_factory(tmp_path):
    torch.manual_seed(0)
    model = prunekit.create_model("resnet20", option="B", width=8)
    assert model.prunekit_factory == {
        "kind": "zoo",
        "name": "resnet20",
        "kwargs": {"option": "B", "width": 8},
    }
    small, _ = structured.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, criterion="l1")
    structured.save_pruned(small, tmp_path / "pruned")
    rebuilt = structured.load_pruned(tmp_path / "pruned")
    x = torch.randn(2, 3, 32, 32)
    small.eval()
    rebuilt.eval()
    assert torch.allclose(small(x), rebuilt(x))
    assert prunekit.count_params(rebuilt) == prunekit.count_params(small)
