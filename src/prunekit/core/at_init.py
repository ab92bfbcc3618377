"""Pruning at initialisation: score the untrained network, prune once, then train it sparse.

Frankle et al. (2021) found that what SNIP, GraSP and SynFlow chose mostly matters through the
per-layer densities (shuffling the mask within each layer keeps the accuracy), so
:func:`prune_at_init` returns those densities beside the masks. Training afterwards is the
caller's loop (keep the masks with ``masks.attach(optimizer, model)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.prune import prune
from prunekit.core.report import format_table
from prunekit.core.targets import Targets


@dataclass(frozen=True)
class LayerDensity:
    name: str
    shape: tuple[int, ...]
    params: int
    kept: int

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 1.0


@dataclass(frozen=True)
class DensityTable:
    """Per-layer densities a criterion chose; ``str(table)`` prints an aligned table."""

    method: str
    rows: tuple[LayerDensity, ...]

    @classmethod
    def from_masks(cls, masks: MaskSet, method: str = "") -> DensityTable:
        rows = tuple(
            LayerDensity(n, tuple(m.shape), m.numel(), int(m.sum())) for n, m in masks.items()
        )
        return cls(method, rows)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 1.0

    def densities(self) -> dict[str, float]:
        """Layer name -> fraction of its weights kept."""
        return {r.name: r.density for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layers": [
                {
                    "name": r.name,
                    "shape": list(r.shape),
                    "params": r.params,
                    "kept": r.kept,
                    "density": r.density,
                }
                for r in self.rows
            ],
            "total": {"params": self.params, "kept": self.kept, "density": self.density},
        }

    def __str__(self) -> str:
        body = [
            [
                r.name,
                "x".join(map(str, r.shape)),
                f"{r.params:,}",
                f"{r.kept:,}",
                f"{r.density:.2%}",
            ]
            for r in self.rows
        ]
        body.append(["total", "", f"{self.params:,}", f"{self.kept:,}", f"{self.density:.2%}"])
        return format_table(["layer", "shape", "params", "kept", "density"], body)


def prune_at_init(
    model: nn.Module,
    method: str,
    sparsity: float,
    data: Iterable[Any] | None = None,
    *,
    allocation: str = "global",
    targets: Targets | None = None,
    num_batches: int | None = None,
    loss_fn: Any = None,
    seed: int = 0,
    criterion_options: dict[str, Any] | None = None,
) -> tuple[MaskSet, DensityTable]:
    """Prune an untrained ``model`` in place and report the per-layer densities chosen.

    Args:
        model: the freshly initialised network.
        method: a registered criterion, e.g. ``"snip"``, ``"grasp"``, ``"synflow"``, ``"magnitude"``.
        sparsity: fraction of the target weights to remove, in [0, 1).
        data: batches of ``(inputs, targets)`` for data-driven criteria (SynFlow only reads the
            input shape from it).
        allocation: how the budget is spread (``"global"`` is what the papers use).
        targets: which weights may be pruned.
        num_batches, loss_fn: shortcuts for the data-driven criteria's options.
        seed: seeds random criteria and ties.
        criterion_options: any other option of the criterion.

    Returns:
        ``(masks, table)``: the mask set (True = kept; the model's pruned weights are zeroed) and
        a :class:`DensityTable`. Keep the masks during training, e.g.
        ``handle = masks.attach(optimizer, model)``.
    """
    options = dict(criterion_options or {})
    if num_batches is not None:
        options["num_batches"] = num_batches
    if loss_fn is not None:
        options["loss_fn"] = loss_fn
    masks = prune(
        model,
        sparsity,
        method=method,
        allocation=allocation,
        targets=targets,
        data=data,
        seed=seed,
        criterion_options=options,
    )
    return masks, DensityTable.from_masks(masks, method)
