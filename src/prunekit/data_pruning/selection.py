"""Which examples to keep: a fraction, hard or easy ones, optionally balanced over classes.

Sorscher et al. (2022): keep the hardest examples when data is plentiful and the easiest when
it is scarce. ``keep="auto"`` follows that rule with the kept fraction as the measure of
plenty: hard when ``fraction >= AUTO_THRESHOLD`` (0.5 by default), easy below. The right
switch point depends on the data set and the model (it moves up as the full data set gets
smaller); 0.5 is a neutral default, not a measured one, and ``auto_threshold`` changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AUTO_THRESHOLD", "KEEP_RULES", "Selection", "resolve_keep", "select"]

KEEP_RULES = ("hard", "easy", "auto")
AUTO_THRESHOLD = 0.5


@dataclass
class Selection:
    """The kept examples: sorted indices into the training set, and how they were chosen."""

    indices: Tensor
    fraction: float
    keep: str
    class_balanced: bool

    def __len__(self) -> int:
        return int(self.indices.numel())


def resolve_keep(keep: str, fraction: float, auto_threshold: float = AUTO_THRESHOLD) -> str:
    """``hard`` or ``easy``: ``keep`` itself, or for ``auto`` the Sorscher rule."""
    if keep not in KEEP_RULES:
        raise ValueError(f"keep: expected one of {', '.join(KEEP_RULES)}, got {keep!r}")
    if keep != "auto":
        return keep
    return "hard" if fraction >= auto_threshold else "easy"


def _order(scores: Tensor, hard: bool) -> Tensor:
    """Indices from most to least wanted; equal scores in index order (stable sort)."""
    key = -scores if hard else scores
    return torch.sort(key, stable=True).indices


def _quotas(counts: Tensor, k: int) -> Tensor:
    """Largest-remainder split of ``k`` over classes in proportion to ``counts`` (remainders
    tie-broken by class id)."""
    n = int(counts.sum())
    exact = counts.double() * k / n
    quota = exact.floor().long()
    left = k - int(quota.sum())
    if left:
        remainder = exact - quota.double()
        order = torch.sort(-remainder, stable=True).indices
        quota[order[:left]] += 1
    return quota


def select(
    scores: Tensor,
    fraction: float,
    keep: str = "hard",
    *,
    labels: Tensor | None = None,
    class_balanced: bool = False,
    auto_threshold: float = AUTO_THRESHOLD,
) -> Selection:
    """Keep ``round(fraction * n)`` examples (at least one) by ``scores`` (higher = harder).

    ``keep``: ``hard`` (highest scores), ``easy`` (lowest) or ``auto`` (see the module doc).
    ``class_balanced``: every class keeps its share of the ``k`` examples in proportion to its
    size (largest remainder), chosen by score within the class; needs ``labels``.
    Ties are broken by index (lower first), so the result is a pure function of the inputs.
    Returns the indices sorted ascending.
    """
    scores = torch.as_tensor(scores).detach().reshape(-1).cpu().double()
    n = scores.numel()
    if n == 0:
        raise ValueError("scores: no examples")
    if torch.isnan(scores).any():
        raise ValueError(f"scores: {int(torch.isnan(scores).sum())} NaN values")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction <= 1
    ):
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    rule = resolve_keep(keep, float(fraction), auto_threshold)
    k = min(n, max(1, int(round(fraction * n))))
    hard = rule == "hard"
    if not class_balanced:
        kept = _order(scores, hard)[:k]
    else:
        if labels is None:
            raise ValueError("labels: class_balanced selection needs the labels")
        labels = torch.as_tensor(labels).reshape(-1).cpu().long()
        if labels.numel() != n:
            raise ValueError(f"labels: expected {n} labels, got {labels.numel()}")
        classes, counts = torch.unique(labels, return_counts=True)
        parts = []
        for c, quota in zip(classes.tolist(), _quotas(counts, k).tolist()):
            members = torch.nonzero(labels == c).reshape(-1)  # ascending: ties stay by index
            parts.append(members[_order(scores[members], hard)[:quota]])
        kept = torch.cat(parts)
    return Selection(kept.sort().values, float(fraction), rule, bool(class_balanced))
