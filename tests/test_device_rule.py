"""The device rule: every tensor a library function creates lives on its parameter's device.

Three checks, all on a CPU-only machine:

1. A static check over ``src/prunekit``: torch factory calls (``torch.zeros``, ``torch.arange``,
   ``torch.tensor``, ...) name their ``device=`` or are on a short, justified whitelist.
2. A virtual second device (``tests/_virtual_device.py``): the model is moved to a device that
   reports itself as ``meta`` while holding real CPU data, so every path runs with its real
   numbers, and any operation that mixes such a tensor with a CPU tensor raises as CUDA would.
   The device-sensitive paths (prune with each allocation, N:M, the criteria at initialisation,
   training with masks, structured pruning, SFW constraints, soups, sparse training, PERP and
   the LLM engine) run there with their data on the CPU, and every tensor they return must be
   on the model's device.
3. Masks on another device than their parameters are moved once and reused, not per step.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from _virtual_device import VIRTUAL, VirtualDevice, leaves, on_virtual
from prunekit.allocation import list_allocations

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches(n: int = 2, batch: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 8, generator=g), torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]


def _all_virtual(model: nn.Module, out=None) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert on_virtual(t), f"{name} left the model's device"
    for t in leaves(out):
        assert on_virtual(t), f"a returned tensor of shape {tuple(t.shape)} is on {t.device}"


@pytest.mark.parametrize("allocation", [a for a in list_allocations() if a != "N:M"] + ["2:4"])
def test_prune_each_allocation(allocation):
    sparsity = 0.2 if allocation == "uniform_plus" else (None if allocation == "2:4" else 0.5)
    with VirtualDevice():
        model = _mlp().to(VIRTUAL)
        masks = prunekit.prune(model, sparsity=sparsity, method="magnitude", allocation=allocation)
        _all_virtual(model, masks)


@pytest.mark.parametrize("method", ["random", "snip", "grasp", "synflow", "taylor"])
def test_criteria_with_cpu_data(method):
    with VirtualDevice():
        model = _mlp().to(VIRTUAL)
        masks = prunekit.prune(model, 0.8, method=method, data=_batches())
        _all_virtual(model, masks)
        assert masks.num_pruned == round(0.8 * masks.numel)


def test_prune_at_init_and_training_with_cpu_masks_and_data():
    from conftest import toy_bundle
    from prunekit.training import Trainer

    data = toy_bundle(features=8)
    with VirtualDevice():
        model = _mlp()
        masks = prunekit.compute_masks(model, 0.7, method="snip", data=_batches())  # on the CPU
        model.to(VIRTUAL)
        masks2, table = prunekit.prune_at_init(model, "synflow", 0.7, _batches())
        _all_virtual(model, masks2)
        trainer = Trainer(
            model, data.train, iterations=4, batch_size=8, masks=masks, device=VIRTUAL, amp=False
        )
        trainer.fit()
        _all_virtual(model, trainer.masks)
        masks.finalize(model)  # CPU masks, model elsewhere: moved, not refused
        for name, p in model.named_parameters():
            if name in masks:
                assert not p[~masks[name].to(VIRTUAL)].any()


def test_sparse_training_rigl_and_granet():
    from prunekit.sparse_training import GraNet, RigL

    with VirtualDevice():
        for make in (
            lambda m, o: RigL(m, o, sparsity=0.8, t_end=6, delta_t=2),
            lambda m, o: GraNet(
                m, o, final_sparsity=0.8, initial_sparsity=0.0, t_start=1, t_prune_end=4,
                t_end=6, delta_t=2, regrow_fraction=0.5,
            ),
        ):  # fmt: skip
            model = _mlp().to(VIRTUAL)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            scheduler = make(model, optimizer)
            for x, y in _batches(6):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x.to(VIRTUAL)), y.to(VIRTUAL)).backward()
                if scheduler.step():
                    optimizer.step()
            _all_virtual(model, scheduler.masks)


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
def test_sfw_constraints(kind, k, options):
    from prunekit.frank_wolfe import SFW, constraints_for_model

    with VirtualDevice():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(80, 4)
        ).to(VIRTUAL)
        groups = constraints_for_model(model, kind, k=k, tau=5.0, init_samples=2, **options)
        opt = SFW(groups, lr=0.5, momentum=0.9)
        opt.make_feasible()
        x, y = torch.randn(8, 1, 10), torch.randint(0, 4, (8,))
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.to(VIRTUAL)), y.to(VIRTUAL)).backward()
            opt.step()
        assert all(r is None or r <= 1 + 1e-4 for r in opt.feasibility())
        _all_virtual(model)


def test_structured_prune():
    from prunekit import structured as st

    with VirtualDevice():
        torch.manual_seed(0)
        model = prunekit.create_model("resnet20", width=8).to(VIRTUAL)
        small, plan = st.prune(model, torch.randn(1, 3, 16, 16).to(VIRTUAL), ratio=0.5)
        _all_virtual(small)
        assert small(torch.randn(2, 3, 16, 16).to(VIRTUAL)).shape == (2, 10)


def test_soups_and_batchnorm_recalibration():
    from prunekit.soups import greedy_soup, recalibrate_batchnorm, uniform_soup

    with VirtualDevice():
        model = prunekit.create_model("resnet20", width=8).to(VIRTUAL)
        sds = [{k: v + i for k, v in model.state_dict().items()} for i in range(2)]
        soup = uniform_soup(sds)
        assert all(on_virtual(v) for v in soup.values())
        res = greedy_soup(sds, lambda sd: float(next(iter(sd.values())).sum()))
        assert all(on_virtual(v) for v in res.state_dict.values())
        recalibrate_batchnorm(model, [torch.randn(4, 3, 16, 16) for _ in range(2)])
        _all_virtual(model)
