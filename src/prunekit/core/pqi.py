"""PQ Index and SAP, sparsity-informed adaptive pruning (Diao et al., ICLR 2023).

The PQ Index of a weight vector w with d unpruned entries, for 0 < p < q:

    I_{p,q}(w) = 1 − d^{1/q − 1/p} · ‖w‖_p / ‖w‖_q,

0 when every |w_i| is equal, approaching 1 − 1/d as a single weight dominates. A larger index means
the weights are more compressible. Its trajectory over pruning rounds first rises (pruning removes
the small, uninformative weights) and then falls once pruning starts cutting weights that matter.

SAP turns the index into the amount to prune: with η_r, γ, β,

    r = ⌈d · (1 + η_r)^{−q/(q−p)} · (1 − I)^{qp/(q−p)}⌉   (a lower bound on the weights to keep),
    c = ⌊d · clamp(γ · (1 − r/d), 0, β)⌋                  (the weights to prune this round).

Defaults p = 0.5, q = 1, η_r = 0.001, γ = 1.2, β = 0.9. The ``c`` smallest-magnitude weights go.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.scores import ElementwiseScores
from prunekit.core.selection import keep_masks_lowest_pruned
from prunekit.core.targets import Targets, select_targets


def _check_pq(p: float, q: float) -> None:
    for name, value in (("p", p), ("q", q)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise TypeError(f"{name}: expected a number, got {value!r}")
    if not 0 < p < q:
        raise ValueError(f"p, q: the PQ Index needs 0 < p < q, got p={p}, q={q}")


@dataclass(frozen=True)
class _Sums:
    """Σ|w|^p, Σ|w|^q and d over the unpruned entries; sums of several layers add up."""

    sum_p: float
    sum_q: float
    count: int

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(self.sum_p + other.sum_p, self.sum_q + other.sum_q, self.count + other.count)

    def index(self, p: float, q: float) -> float:
        if self.count == 0 or self.sum_q <= 0.0:
            return 0.0  # no weights, or all zero: nothing to measure
        norm_p = self.sum_p ** (1.0 / p)
        norm_q = self.sum_q ** (1.0 / q)
        return 1.0 - self.count ** (1.0 / q - 1.0 / p) * norm_p / norm_q


def _sums(weight: Tensor, mask: Tensor | None, p: float, q: float) -> _Sums:
    w = weight.detach().reshape(-1)
    if mask is not None:
        w = w[mask.reshape(-1).to(w.device)]
        count = w.numel()
    else:
        count = int((w != 0).sum())
    magnitude = w.double().abs()
    # (a·x)^p: scale first so that tiny or huge weights do not underflow / overflow the sums.
    scale = float(magnitude.max()) if magnitude.numel() else 0.0
    if scale == 0.0:
        return _Sums(0.0, 0.0, count)
    normed = magnitude / scale
    return _Sums(
        float(normed.pow(p).sum()) * scale**p, float(normed.pow(q).sum()) * scale**q, count
    )


def pq_index(
    weights: Tensor | Iterable[Tensor],
    *,
    p: float = 0.5,
    q: float = 1.0,
    masks: Tensor | Iterable[Tensor | None] | None = None,
) -> float:
    """PQ Index of one tensor, or of several tensors taken together as one vector.

    Args:
        weights: a tensor or an iterable of tensors.
        p, q: the norms compared (0 < p < q).
        masks: keep-masks matching ``weights``; d counts the kept entries. Without masks d is
            the number of non-zero entries (so zeros left by pruning do not count).

    Returns:
        The index in [0, 1 − 1/d]; 0 for an empty or all-zero vector.
    """
    _check_pq(p, q)
    tensors = [weights] if isinstance(weights, Tensor) else list(weights)
    if masks is None:
        mask_list: list[Tensor | None] = [None] * len(tensors)
    elif isinstance(masks, Tensor):
        mask_list = [masks]
    else:
        mask_list = list(masks)
    if len(mask_list) != len(tensors):
        raise ValueError(
            f"masks: expected {len(tensors)} masks, one per tensor, got {len(mask_list)}"
        )
    total = _Sums(0.0, 0.0, 0)
    for tensor, mask in zip(tensors, mask_list):
        if mask is not None and mask.shape != tensor.shape:
            raise ValueError(
                f"masks: shape {tuple(mask.shape)} does not match the weights {tuple(tensor.shape)}"
            )
        total = total + _sums(tensor, mask, p, q)
    return total.index(p, q)


@dataclass(frozen=True)
class PQIndexReport:
    """PQ Index per layer and over all layers together (``global_index``)."""

    layers: dict[str, float]
    global_index: float
    kept: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": dict(self.layers), "global": self.global_index, "kept": dict(self.kept)}


def pq_index_report(
    model: nn.Module,
    masks: MaskSet | Mapping[str, Tensor] | None = None,
    *,
    targets: Targets | None = None,
    p: float = 0.5,
    q: float = 1.0,
) -> PQIndexReport:
    """PQ Index of each prunable layer of ``model`` and of all of them as one vector.

    The layers are the masked parameters when ``masks`` is given, else the default targets (or
    ``targets``); without masks d counts non-zero weights.
    """
    _check_pq(p, q)
    if isinstance(masks, MaskSet):
        params = masks.validate(model)
    elif masks is not None:
        named = dict(model.named_parameters())
        params = {n: named[n] for n in masks}
    else:
        params = select_targets(model, targets)
    layers: dict[str, float] = {}
    kept: dict[str, int] = {}
    total = _Sums(0.0, 0.0, 0)
    for name, param in params.items():
        sums = _sums(param, masks[name] if masks is not None else None, p, q)
        layers[name] = sums.index(p, q)
        kept[name] = sums.count
        total = total + sums
    return PQIndexReport(layers, total.index(p, q), kept)


@dataclass(frozen=True)
class SAPAmount:
    """One SAP decision: ``kept`` (d), ``pq_index`` (I), ``keep_bound`` (r) and ``prune`` (c)."""

    kept: int
    pq_index: float
    keep_bound: int
    prune: int


def sap_prune_count(
    kept: int,
    pq: float,
    *,
    p: float = 0.5,
    q: float = 1.0,
    eta_r: float = 0.001,
    gamma: float = 1.2,
    beta: float = 0.9,
) -> SAPAmount:
    """How many of ``kept`` weights to prune given their PQ Index ``pq`` (SAP, Diao et al. 2023).

    r = ⌈d (1 + η_r)^{−q/(q−p)} (1 − I)^{qp/(q−p)}⌉ and c = ⌊d · clamp(γ (1 − r/d), 0, β)⌋.
    """
    _check_pq(p, q)
    if isinstance(kept, bool) or not isinstance(kept, int) or kept < 0:
        raise ValueError(f"kept: expected an int >= 0 (the unpruned weights), got {kept!r}")
    if not 0.0 <= pq <= 1.0:
        raise ValueError(f"pq: the PQ Index lies in [0, 1], got {pq}")
    if eta_r < 0:
        raise ValueError(f"eta_r: expected a number >= 0, got {eta_r}")
    if gamma <= 0:
        raise ValueError(f"gamma: expected a number > 0, got {gamma}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: expected a number in [0, 1], got {beta}")
    if kept == 0:
        return SAPAmount(0, pq, 0, 0)
    bound = kept * (1.0 + eta_r) ** (-q / (q - p)) * (1.0 - pq) ** (q * p / (q - p))
    r = min(kept, math.ceil(bound))
    fraction = min(max(gamma * (1.0 - r / kept), 0.0), beta)
    return SAPAmount(kept, pq, r, math.floor(kept * fraction))


class SAPSchedule:
    """SAP as a pruning schedule: each round, the PQ Index decides how much magnitude pruning.

    Between rounds train (or retrain) the model with the masks enforced, then call
    :meth:`prune_round` (or :meth:`next_sparsity` to only ask how far the next round goes).

    Args:
        scope: ``"global"`` (one index and one magnitude threshold over all layers) or
            ``"layer"`` (each layer its own index and amount).
        p, q, eta_r, gamma, beta: SAP's hyper-parameters (defaults from the paper).
        targets: the prunable weights when no masks are given yet.

    Attributes:
        history: one dict per round (PQ Index per layer and global, amounts, sparsity after).
    """

    def __init__(
        self,
        *,
        scope: str = "global",
        p: float = 0.5,
        q: float = 1.0,
        eta_r: float = 0.001,
        gamma: float = 1.2,
        beta: float = 0.9,
        targets: Targets | None = None,
    ) -> None:
        if scope not in ("global", "layer"):
            raise ValueError(f"scope: expected 'global' or 'layer', got {scope!r}")
        _check_pq(p, q)
        sap_prune_count(1, 0.0, p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta)  # validates
        self.scope = scope
        self.options = {"p": p, "q": q, "eta_r": eta_r, "gamma": gamma, "beta": beta}
        self.targets = targets
        self.history: list[dict[str, Any]] = []

    def _masks(self, model: nn.Module, masks: MaskSet | None) -> MaskSet:
        if masks is not None:
            if not isinstance(masks, MaskSet):
                raise TypeError(f"masks: expected a MaskSet, got {type(masks).__name__}")
            masks.validate(model)
            return masks
        params = select_targets(model, self.targets)
        if not params:
            raise ValueError("model: no prunable parameters for SAP")
        return MaskSet({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    def plan(self, model: nn.Module, masks: MaskSet | None = None) -> dict[str, SAPAmount]:
        """The next round's amounts: ``{"global": ...}`` or one per layer (scope ``"layer"``)."""
        masks = self._masks(model, masks)
        pq = {k: self.options[k] for k in ("p", "q")}
        report = pq_index_report(model, masks, **pq)
        if self.scope == "global":
            kept = sum(report.kept.values())
            return {"global": sap_prune_count(kept, report.global_index, **self.options)}
        return {
            n: sap_prune_count(report.kept[n], report.layers[n], **self.options)
            for n in report.layers
        }

    def next_sparsity(self, model: nn.Module, masks: MaskSet | None = None) -> float:
        """Total sparsity of the targets after the next round."""
        masks = self._masks(model, masks)
        extra = sum(a.prune for a in self.plan(model, masks).values())
        return (masks.num_pruned + extra) / masks.numel

    @torch.no_grad()
    def prune_round(self, model: nn.Module, masks: MaskSet | None = None) -> MaskSet:
        """Prune the SAP amount of smallest-magnitude weights in place; return the new masks.

        Pruned entries stay pruned. The model's pruned weights are zeroed.
        """
        masks = self._masks(model, masks)
        params = masks.validate(model)
        report = pq_index_report(model, masks, p=self.options["p"], q=self.options["q"])
        plan = self.plan(model, masks)
        scores = ElementwiseScores(params, torch.abs)
        existing = dict(masks.items())
        new = MaskSet()
        if self.scope == "global":
            k = masks.num_pruned + plan["global"].prune
            new.update(keep_masks_lowest_pruned(scores, list(params), k, existing))
        else:
            for name in params:
                k = int((~masks[name]).sum()) + plan[name].prune
                new.update(keep_masks_lowest_pruned(scores, [name], k, existing))
        new.apply(model)
        self.history.append(
            {
                "round": len(self.history) + 1,
                "pq_index": report.global_index,
                "layer_pq_index": dict(report.layers),
                "pruned": {n: a.prune for n, a in plan.items()},
                "sparsity": new.sparsity,
            }
        )
        return new
