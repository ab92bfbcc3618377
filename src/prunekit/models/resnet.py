"""CIFAR ResNets (He et al. 2016): 6n+2 layers, 16/32/64 channels, shortcut option A or B."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models import register_model


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        option: str = "A",
        in_channels: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth: a CIFAR ResNet has depth 6n+2 (20, 32, 56, 110), got {depth}")
        if option not in ("A", "B"):
            raise ValueError(
                f"option: shortcut option is 'A' (padding) or 'B' (projection), got {option!r}"
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        in_planes = width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, option))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _factory(depth: int):
    def build(
        num_classes: int = 10, option: str = "A", in_channels: int = 3, width: int = 16
    ) -> CifarResNet:
        return CifarResNet(depth, num_classes, option, in_channels, width)

    build.__doc__ = f"CIFAR ResNet-{depth} (shortcut option A or B)."
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_factory(_depth))
