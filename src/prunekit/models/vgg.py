"""VGG with BatchNorm for 32x32 inputs."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models import register_model

CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(
        self, depth: int = 16, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"depth: VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(item * width_mult))
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("vgg11")
def vgg11(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> VGG:
    """VGG-11 with BatchNorm for 32x32 images."""
    return VGG(11, num_classes, in_channels, width_mult)


@register_model("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> VGG:
    """VGG-16 with BatchNorm for 32x32 images."""
    return VGG(16, num_classes, in_channels, width_mult)
