"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation blocks, for 32x32 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if not isinstance(self.shortcut, nn.Identity) else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 16,
        widen: int = 4,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth: a Wide ResNet has depth 6n+4 (16, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        in_planes = widths[0]
        for stage in range(3):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(WideBlock(in_planes, widths[stage + 1], stride, dropout))
                in_planes = widths[stage + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn16")
def wrn16(
    widen: int = 4, num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3
) -> WideResNet:
    """Wide-ResNet-16-k."""
    return WideResNet(16, widen, num_classes, dropout, in_channels)


@register_model("wrn28")
def wrn28(
    widen: int = 10, num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3
) -> WideResNet:
    """Wide-ResNet-28-k."""
    return WideResNet(28, widen, num_classes, dropout, in_channels)
