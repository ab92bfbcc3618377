"""Image augmentation written on tensors (no torchvision): random crop with padding, flips."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad a batch ``(N, C, H, W)`` by ``padding`` and crop each image back at a random offset."""
    if x.dim() != 4:
        raise ValueError(f"x: expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = "cpu"
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    # Gather rows then columns with per-image offsets: one indexing op, no Python loop per image.
    rows = off_y[:, None] + torch.arange(h, device=x.device)[None, :]  # (N, H)
    cols = off_x[:, None] + torch.arange(w, device=x.device)[None, :]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image of a batch ``(N, C, H, W)`` left-right with probability ``p``."""
    if x.dim() != 4:
        raise ValueError(f"x: expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class CropFlip:
    """Standard CIFAR augmentation: random crop with ``padding`` and a horizontal flip."""

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        self.padding = padding
        self.flip = flip

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = random_crop(x, self.padding, generator)
        return random_hflip(x, 0.5, generator) if self.flip else x

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, flip={self.flip})"
