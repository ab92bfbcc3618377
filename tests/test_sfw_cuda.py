"""SFW on a CUDA device: every constraint steps on the GPU and stays feasible."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.frank_wolfe import SFW, constraints_for_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    "kind,k,options",
    [
        ("k_support", 0.1, {}),
        ("k_sparse", 0.1, {}),
        ("group_k_support", 0.25, {}),
        ("spectral_k_support", 0.25, {"svd_method": "power"}),
        ("nuclear", None, {"svd_method": "power"}),
        ("linf", None, {}),
    ],
)
def test_sfw_steps_on_cuda(kind, k, options):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(160, 4)
    )
    model.cuda()
    groups = constraints_for_model(model, kind, k=k, tau=5.0, init_samples=2, **options)
    opt = SFW(groups, lr=0.5, momentum=0.9)
    opt.make_feasible()
    x = torch.randn(32, 1, 10, device="cuda")
    y = torch.randint(0, 4, (32,), device="cuda")
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(r is None or r <= 1 + 1e-4 for r in opt.feasibility())
    assert all(p.is_cuda for p in model.parameters())
