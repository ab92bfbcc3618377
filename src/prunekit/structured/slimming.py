"""Sparse training that prepares structured pruning.

- :class:`NetworkSlimming` (Liu et al. 2017): an L1 penalty on every BatchNorm scale gamma, so
  unimportant channels drift to zero and ``criterion="bn_scale"`` can remove them.
- :class:`MaskSparsity` (Jiang et al. 2022): the same L1 penalty, but only on the channels already
  selected for removal, so the channels that stay are not shrunk.

Both work in any training loop, either as a loss term (``loss = loss + reg.penalty()``) or as a
sub-gradient added after ``backward()`` (``reg.after_backward()``), the form of the original code,
and both are :class:`prunekit.training.Callback` objects: pass them in ``Trainer(callbacks=[...])``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunekit.structured.groups import ChannelGroup
from prunekit.training.trainer import Callback

__all__ = ["MaskSparsity", "NetworkSlimming", "bn_scales"]

_BN = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


def bn_scales(model: nn.Module) -> dict[str, nn.Parameter]:
    """The BatchNorm / GroupNorm scale parameters, by qualified name."""
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, _BN) and m.weight is not None
    }


class NetworkSlimming(Callback):
    """L1 on BatchNorm gamma with strength ``lam`` (1e-4 for VGG, 1e-5 for ResNets in the paper)."""

    def __init__(self, model: nn.Module, lam: float = 1e-4) -> None:
        if lam < 0:
            raise ValueError(f"lam: expected a non-negative strength, got {lam!r}")
        self.lam = float(lam)
        self.scales = bn_scales(model)
        if not self.scales:
            raise ValueError("model: Network Slimming needs BatchNorm/GroupNorm layers with scales")

    def penalty(self) -> Tensor:
        """``lam * sum |gamma|`` as a differentiable loss term."""
        total = sum(p.abs().sum() for p in self.scales.values())
        return self.lam * total

    @torch.no_grad()
    def after_backward(self, scale: float = 1.0) -> None:
        """Add the L1 sub-gradient ``lam * sign(gamma)`` to the gradients (call after backward).

        ``scale`` multiplies it when the gradients are scaled (mixed-precision loss scaling).
        """
        for p in self.scales.values():
            if p.grad is not None:
                p.grad.add_(self._mask(p) * torch.sign(p), alpha=self.lam * scale)

    def _mask(self, p: Tensor) -> Tensor | float:
        return 1.0

    def on_after_backward(self, *args: Any, **kwargs: Any) -> None:
        """Alias of :meth:`after_backward` for loops with Lightning-style hook names."""
        self.after_backward()

    def on_before_step(self, trainer: Any, loss: Tensor) -> None:
        """Trainer hook (after ``backward()``, before the optimizer step)."""
        scaler = getattr(trainer, "scaler", None)
        self.after_backward(float(scaler.get_scale()) if scaler is not None else 1.0)
        return None


class MaskSparsity(NetworkSlimming):
    """L1 only on the gamma entries of channels that are going to be pruned.

    ``selected`` maps scale parameter names to boolean tensors (True = to be removed), or is built
    from a structured plan with :meth:`from_plan`.
    """

    def __init__(self, model: nn.Module, selected: dict[str, Tensor], lam: float = 1e-4) -> None:
        super().__init__(model, lam)
        unknown = set(selected) - set(self.scales)
        if unknown:
            raise ValueError(f"selected: not BatchNorm scales of the model: {sorted(unknown)}")
        self.selected = {}
        for name, mask in selected.items():
            mask = torch.as_tensor(mask, dtype=torch.bool)
            if mask.shape != self.scales[name].shape:
                raise ValueError(
                    f"selected[{name!r}]: shape {tuple(mask.shape)} does not match "
                    f"{tuple(self.scales[name].shape)}"
                )
            self.selected[name] = mask
        self.scales = {n: self.scales[n] for n in self.selected}
        self._masks_by_id = {id(self.scales[n]): m for n, m in self.selected.items()}

    @classmethod
    def from_plan(
        cls,
        model: nn.Module,
        groups: list[ChannelGroup],
        pruned: dict[int, Tensor],
        lam: float = 1e-4,
    ) -> MaskSparsity:
        """Select the scale entries of the components that a plan would prune."""
        scales = bn_scales(model)
        selected: dict[str, Tensor] = {}
        for gi, positions in pruned.items():
            for member in groups[gi].members:
                name, axis = member
                if name in scales and axis == 0:
                    mask = selected.setdefault(
                        name, torch.zeros_like(scales[name], dtype=torch.bool)
                    )
                    rows = groups[gi].member_index(member)[positions.cpu()].reshape(-1)
                    mask[rows.to(mask.device)] = True
        return cls(model, selected, lam)

    def penalty(self) -> Tensor:
        total = sum((p * self.selected[n].to(p.device)).abs().sum() for n, p in self.scales.items())
        return self.lam * total

    def _mask(self, p: Tensor) -> Tensor:
        return self._masks_by_id[id(p)].to(device=p.device, dtype=p.dtype)
