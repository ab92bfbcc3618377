"""Per-layer sparsity report: printable table and plain data for JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.targets import Targets, select_targets


@dataclass(frozen=True)
class LayerRow:
    name: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Rows (one per parameter) plus totals; ``str(report)`` is an aligned table."""

    rows: tuple[LayerRow, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def nonzeros(self) -> int:
        return sum(r.nonzeros for r in self.rows)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        """Plain data (for JSON)."""
        return {
            "layers": [
                {**asdict(r), "shape": list(r.shape), "sparsity": r.sparsity} for r in self.rows
            ],
            "total": {"params": self.params, "nonzeros": self.nonzeros, "sparsity": self.sparsity},
        }

    def __str__(self) -> str:
        return format_table(
            ["layer", "shape", "params", "non-zeros", "sparsity"],
            [
                [
                    r.name,
                    "x".join(map(str, r.shape)),
                    f"{r.params:,}",
                    f"{r.nonzeros:,}",
                    f"{r.sparsity:.2%}",
                ]
                for r in self.rows
            ]
            + [["total", "", f"{self.params:,}", f"{self.nonzeros:,}", f"{self.sparsity:.2%}"]],
        )


def sparsity_report(
    model: nn.Module, masks: MaskSet | None = None, targets: Targets | None = None
) -> SparsityReport:
    """Count non-zeros of the masked parameters (or of the default targets when ``masks`` is None)."""
    if masks is not None:
        params = masks.validate(model)
    else:
        params = select_targets(model, targets)
    rows = []
    for name, p in params.items():
        nonzeros = int(torch.count_nonzero(p.detach()))
        rows.append(LayerRow(name, tuple(p.shape), p.numel(), nonzeros))
    return SparsityReport(tuple(rows))


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Align columns: the first left-aligned, the rest right-aligned; a rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
