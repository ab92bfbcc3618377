"""Your own code: a small CNN and a dataset class, nothing prunekit-specific except the bundle.

``my.yaml`` names these functions (``mycnn:build_model`` and ``mycnn:build_data``); prunekit
imports them because you run that config yourself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from prunekit.data import DatasetBundle


class Stripes(Dataset):
    """Noisy 16x16 images of stripes in one of four directions (the label), made from a seed."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
        patterns = torch.stack([rows % 4 < 2, cols % 4 < 2, (rows + cols) % 4 < 2,
                                (rows - cols) % 4 < 2]).float()  # fmt: skip
        noise = 1.4 * torch.randn(n, 16, 16, generator=g)
        self.images = (patterns[self.labels] + noise).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class MyCNN(nn.Module):
    """Two convolutions, global average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def build_model(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    """``model.factory``: in_channels and num_classes come from the data set."""
    return MyCNN(in_channels, num_classes, width)


def build_data(num_samples: int = 2000, seed: int = 0) -> DatasetBundle:
    """``data.factory``: any map-style (x, y) datasets become a prunekit DatasetBundle."""
    train = Stripes(num_samples, seed)
    test = Stripes(max(num_samples // 4, 16), seed + 1)
    return DatasetBundle.from_datasets(train, test, name="stripes", val_fraction=0.1, seed=seed)
