"""Multi-layer perceptrons and LeNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunekit.models import register_model


class MLP(nn.Module):
    """Flatten, then Linear + ReLU for each hidden width, then a Linear classifier."""

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (256, 128), num_classes: int = 10
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("mlp")
def mlp(in_features: int = 64, hidden: Sequence[int] = (256, 128), num_classes: int = 10) -> MLP:
    """MLP with configurable hidden widths."""
    return MLP(in_features, hidden, num_classes)


@register_model("lenet300")
def lenet300(in_features: int = 784, num_classes: int = 10) -> MLP:
    """LeNet-300-100 (LeCun et al. 1998): two hidden layers of 300 and 100 units."""
    return MLP(in_features, (300, 100), num_classes)


class LeNet5(nn.Module):
    """LeNet-5 style CNN: two conv + pool stages, three fully connected layers."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((image_size // 2) - 4) // 2
        if side < 1:
            raise ValueError(
                f"image_size: LeNet-5 needs images of at least 12 pixels, got {image_size}"
            )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> LeNet5:
    """LeNet-5 for square images."""
    return LeNet5(in_channels, num_classes, image_size)


class CNN1d(nn.Module):
    """A small 1-D CNN (for MNIST-1D sequences of shape (batch, 1, length) or (batch, length))."""

    def __init__(self, length: int = 40, channels: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        out_len = (((length + 1) // 2) + 1) // 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * out_len, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))


@register_model("cnn1d")
def cnn1d(length: int = 40, channels: int = 32, num_classes: int = 10) -> CNN1d:
    """Small 1-D CNN for MNIST-1D."""
    return CNN1d(length, channels, num_classes)
