"""One-layer pruning rules: magnitude, Wanda and the OWL allocation.

Every function works on a weight matrix laid out ``(out_features, in_features)`` and returns a
boolean keep-mask of that shape (True = kept). Selection reuses prunekit's exact allocations:
per-row pruning is ``keep_lowest_per_row`` (a stable sort of each row), N:M is ``nm_masks`` and a
per-layer threshold is ``keep_masks_lowest_pruned``.

Magnitude and Wanda are registered as :class:`~prunekit.llm.rules.LLMRule` criteria of kind
``llm`` (SparseGPT in :mod:`prunekit.llm.sparsegpt`); the engine runs whatever that kind holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from prunekit.core.allocation import AllocationContext, keep_lowest_per_row, nm_masks, parse_nm
from prunekit.core.scores import TensorScores
from prunekit.core.selection import keep_masks_lowest_pruned
from prunekit.llm.rules import LayerInputs, register_llm_rule

__all__ = [
    "check_pattern",
    "magnitude_mask",
    "mask_from_scores",
    "outlier_ratio",
    "owl_sparsities",
    "wanda_mask",
    "wanda_scores",
]


def check_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` or ``(2, 4)`` -> (n kept, m group size); None for unstructured."""
    if pattern is None:
        return None
    nm = tuple(pattern) if isinstance(pattern, (tuple, list)) else parse_nm(pattern)
    if nm is None or len(nm) != 2 or not 0 < nm[0] < nm[1]:
        raise ValueError(f"pattern: expected 'N:M' with 0 < N < M (e.g. '2:4'), got {pattern!r}")
    return int(nm[0]), int(nm[1])


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def mask_from_scores(
    scores: Tensor, sparsity: float, pattern: tuple[int, int] | None, scope: str = "row"
) -> Tensor:
    """Keep-mask pruning the lowest scores: per row, per layer, or N:M along the inputs.

    Per row, each row loses ``int(in_features * sparsity)`` entries (rounded down, the rule of
    the published Wanda code), chosen by a stable sort (ties go to the lower column index); per
    layer, exactly ``round(sparsity * numel)`` in total.
    Neither empties a row or the layer: at least one entry stays (sparsity < 1 truncates
    below the row's width; the per-layer count is capped at numel - 1).
    """
    if pattern is not None:
        n, m = pattern
        return nm_masks(AllocationContext(TensorScores({"w": scores}), None), n, m)["w"]
    if scope == "row":
        # int(), not round(): the published Wanda code truncates, and masks must match it.
        k = int(scores.shape[1] * sparsity)
        per_row = torch.full((scores.shape[0],), k, dtype=torch.long, device=scores.device)
        return keep_lowest_per_row(scores, per_row, None)
    if scope == "layer":
        k = min(round(sparsity * scores.numel()), max(scores.numel() - 1, 0))
        return keep_masks_lowest_pruned(TensorScores({"w": scores}), ["w"], k)["w"]
    raise ValueError(f"scope: expected 'row' or 'layer', got {scope!r}")


def magnitude_mask(
    weight: Tensor, sparsity: float, pattern: tuple[int, int] | None = None, scope: str = "layer"
) -> Tensor:
    """Prune the smallest |W| per layer (default) or per row, or N:M."""
    return mask_from_scores(weight.detach().abs().float(), sparsity, pattern, scope)


def wanda_scores(weight: Tensor, col_sq_norm: Tensor) -> Tensor:
    """S_ij = |W_ij| * ||X_j||_2, from the per-input-feature sum of squares of the activations."""
    return weight.detach().abs().float() * torch.sqrt(col_sq_norm.float()).reshape(1, -1)


def wanda_mask(
    weight: Tensor, col_sq_norm: Tensor, sparsity: float, pattern: tuple[int, int] | None = None
) -> Tensor:
    """Wanda: per output row, prune the lowest |W| * ||X_j|| (or N:M within each row)."""
    return mask_from_scores(wanda_scores(weight, col_sq_norm), sparsity, pattern, "row")


@register_llm_rule("magnitude", needs="weights", doc=magnitude_mask.__doc__)
def _magnitude_rule(layer: LayerInputs) -> Tensor:
    scope = getattr(layer.options, "magnitude_scope", "layer")
    return magnitude_mask(layer.weight, layer.sparsity, layer.pattern, scope)


@register_llm_rule("wanda", needs="activations", doc=wanda_mask.__doc__)
def _wanda_rule(layer: LayerInputs) -> Tensor:
    assert layer.col_sq_norm is not None  # the engine provides it for needs="activations"
    return wanda_mask(layer.weight, layer.col_sq_norm, layer.sparsity, layer.pattern)


def outlier_ratio(scores: Sequence[Tensor], m: float = 5.0) -> float:
    """OWL's layer outlier ratio: share of the scores (all linears of a block) above m x mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities from outlier ratios (OWL): spread over [s - lam, s + lam], mean s.

    A higher outlier ratio gives a lower sparsity. Equal ratios give ``sparsity`` everywhere.
    """
    check_sparsity(sparsity)
    if not lam >= 0.0:
        raise ValueError(f"owl_lambda: expected a non-negative number, got {lam!r}")
    values = [float(r) for r in ratios]
    if not values:
        return []
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi):
        return [sparsity] * len(values)
    scaled = [(v - lo) / (hi - lo) * 2.0 * lam for v in values]
    mean = sum(scaled) / len(scaled)
    densities = [v - mean + (1.0 - sparsity) for v in scaled]
    return [min(max(1.0 - d, 0.0), 1.0) for d in densities]
