"""Shared toy models and fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class ToyCNN(nn.Module):
    """Conv2d, Conv1d-free CNN with a ConvTranspose and a Linear head: every default target type."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(torch.relu(self.up(x)).flatten(1))


def toy_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def toy_cnn() -> nn.Module:
    torch.manual_seed(0)
    return ToyCNN()


def pytest_collection_modifyitems(config, items):
    """``conformance`` tests run only when asked for (``-m conformance``)."""
    if "conformance" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="conformance suite: run with -m conformance")
    for item in items:
        if "conformance" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def single_thread():
    """Tests use tiny models, which run fastest on one torch thread (OpenMP spin-waiting makes
    them many times slower with two threads on a busy 2-core machine); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_bundle(n: int = 120, features: int = 12, classes: int = 3, seed: int = 0):
    """A linearly separable classification DatasetBundle split 2/3 train, 1/6 val, 1/6 test."""
    from prunekit.data.base import DatasetBundle, TensorData

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    data = TensorData(x, (x @ torch.randn(features, classes, generator=g)).argmax(1))
    train, val = n * 2 // 3, n * 5 // 6
    return DatasetBundle(
        "toy",
        data.subset(torch.arange(train)),
        data.subset(torch.arange(train, val)),
        data.subset(torch.arange(val, n)),
        classes,
        (features,),
    )


MODEL_FACTORIES = {"mlp": toy_mlp, "cnn": toy_cnn}
INPUTS = {"mlp": lambda: torch.randn(8, 32), "cnn": lambda: torch.randn(2, 8, 16, 16)}


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def model_and_input(request):
    return MODEL_FACTORIES[request.param](), INPUTS[request.param]()


@pytest.fixture
def mlp() -> nn.Module:
    return toy_mlp()


@pytest.fixture
def cnn() -> nn.Module:
    return toy_cnn()


@pytest.fixture(autouse=True)
def virtual_cuda(request, monkeypatch):
    """With ``PRUNEKIT_VIRTUAL_CUDA=1`` every test runs as if CUDA were present: the default
    device (``train.device: auto``, ``Trainer(device=None)``) is the virtual second device of
    ``tests/_virtual_device.py``, so tensors left on the CPU raise as they would on a GPU."""
    import os

    if os.environ.get("PRUNEKIT_VIRTUAL_CUDA") != "1" or request.node.get_closest_marker("gpu"):
        yield
        return
    if "torch_compile" in request.node.name:
        pytest.skip("torch.compile does not trace under a Python dispatch mode")
    from _virtual_device import VIRTUAL, VirtualDevice
    from prunekit.core import device as _device

    monkeypatch.setattr(_device, "default_device", lambda: VIRTUAL)
    with VirtualDevice():
        yield
