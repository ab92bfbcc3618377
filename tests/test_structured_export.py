"""Pruned models are ordinary modules: torch.export and torch.compile accept them."""

from __future__ import annotations

import pytest
import torch

import prunekit.structured as st
from prunekit.models import create_model


def test_torch_export_of_pruned_resnet():
    torch.manual_seed(0)
    model = create_model("resnet20", width=8).eval()
    x = torch.randn(2, 3, 16, 16)
    model, plan = st.prune(model, x, ratio=0.5)
    assert plan.macs_ratio > 1.5
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.slow
def test_torch_compile_of_pruned_gpt():
    torch.manual_seed(0)
    model = create_model("gpt", n_layer=1, n_embd=32, n_head=4, block_size=16).eval()
    ids = torch.randint(0, 256, (1, 8))
    model, _ = st.prune(model, ids, ratio=0.5)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids), model(ids))
