"""The one-call API: ``prunekit.prune(model, sparsity=0.9, method="magnitude", allocation="global")``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.core.allocation import (
    AllocationContext,
    allocate,
    parse_nm,
    plan_counts,
    validate_allocation,
)
from prunekit.core.errors import DeviceError
from prunekit.core.masks import MaskSet
from prunekit.core.selection import NonFiniteScoreError
from prunekit.core.serialization import without_storage
from prunekit.core.targets import Targets, select_targets
from prunekit.criteria import create_criterion


def _check_sparsity(sparsity: float | None, allocation: str) -> float | None:
    nm = parse_nm(allocation)
    if nm is not None:
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is not None and not math.isclose(float(sparsity), implied, abs_tol=1e-9):
            raise ValueError(
                f"sparsity: allocation {allocation!r} prunes exactly {implied:.4g}; "
                f"pass sparsity=None or {implied:.4g}, got {sparsity}"
            )
        return implied
    if sparsity is None:
        raise ValueError(
            f"sparsity: allocation {allocation!r} needs a sparsity in [0, 1), got None"
        )
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity: expected a number in [0, 1), got {type(sparsity).__name__}")
    if math.isnan(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity}")
    return float(sparsity)


def _check_not_llm_method(method: str) -> None:
    """Wanda / SparseGPT / OWL prune a transformer block by block from its activations: they live
    in :mod:`prunekit.llm`, not among the criteria of :func:`prune`."""
    from prunekit.criteria import CRITERIA

    if isinstance(method, str) and method.lower() not in CRITERIA:
        from prunekit.criteria.registry import criterion_names

        if method.lower() in (*criterion_names("llm"), "owl"):
            raise ValueError(
                f"method: {method!r} is a layer-wise LLM pruning method: use "
                f"prunekit.llm.prune_llm(model, method={method.lower()!r}, sparsity=..., "
                "calibration=..., tokenizer=...) or 'prunekit prune-llm' (criteria for "
                "prunekit.prune: prunekit list criteria)"
            )


def _prepare(
    model: nn.Module,
    sparsity: float | None,
    method: str,
    allocation: str,
    targets: Targets | None,
    masks: MaskSet | None,
    min_keep: int | float | None,
    data: Iterable[Any] | None,
    seed: int,
    criterion_options: dict[str, Any] | None,
) -> tuple[dict[str, nn.Parameter], AllocationContext, str]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    allocation = validate_allocation(allocation)
    sparsity = _check_sparsity(sparsity, allocation)
    _check_not_llm_method(method)
    criterion = create_criterion(method, **(criterion_options or {}))
    if criterion.requires_data and data is None:
        raise ValueError(f"data: method {method!r} needs calibration data (an iterable of batches)")
    params = select_targets(model, targets)
    if not params:
        raise ValueError(
            "model: no prunable parameters (default targets are the weights of Linear, Conv and "
            "ConvTranspose layers; see prunekit.Targets)"
        )
    on_meta = [name for name, param in params.items() if without_storage(param)]
    if on_meta:
        raise DeviceError(
            f"model: {on_meta[0]!r} is on the meta device (no weights to score); load or "
            "materialise the model (e.g. model.to_empty(device='cpu') then load_state_dict) first"
        )
    existing: dict[str, torch.Tensor] = {}
    if masks is not None:
        if not isinstance(masks, MaskSet):
            raise TypeError(f"masks: expected a MaskSet, got {type(masks).__name__}")
        masks.validate(model)
        existing = masks.placed({n: p for n, p in params.items() if n in masks})  # moved once
    if not criterion.elementwise_of_weights:
        for name, param in params.items():
            if not torch.isfinite(param.detach()).all():
                raise ValueError(f"model: weights of {name!r} contain NaN or inf")
    # Iterative criteria (SynFlow) prune inside and must know how far to go.
    extra = {"sparsity": sparsity, "masks": existing} if criterion.target_aware else {}
    scores = criterion.scores(model, params, data=data, seed=seed, **extra)
    context = AllocationContext(scores, sparsity, existing, min_keep=min_keep, seed=seed)
    return params, context, allocation


def compute_masks(
    model: nn.Module,
    sparsity: float | None = None,
    method: str = "magnitude",
    allocation: str = "global",
    *,
    targets: Targets | None = None,
    masks: MaskSet | None = None,
    min_keep: int | float | None = None,
    data: Iterable[Any] | None = None,
    seed: int = 0,
    criterion_options: dict[str, Any] | None = None,
) -> MaskSet:
    """Like :func:`prune` but leaves the model untouched: only the masks are returned."""
    _params, context, allocation = _prepare(
        model, sparsity, method, allocation, targets, masks, min_keep, data, seed, criterion_options
    )
    try:
        new = allocate(allocation, context)
    except NonFiniteScoreError as err:
        raise ValueError(f"model: weights or scores of {err.name!r} contain NaN or inf") from err
    result = masks.clone() if masks is not None else MaskSet()
    for name, mask in new.items():
        result[name] = mask
    return result


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    method: str = "magnitude",
    allocation: str = "global",
    *,
    targets: Targets | None = None,
    masks: MaskSet | None = None,
    min_keep: int | float | None = None,
    data: Iterable[Any] | None = None,
    seed: int = 0,
    criterion_options: dict[str, Any] | None = None,
) -> MaskSet:
    """Prune ``model`` in place and return its mask set (True = kept).

    Args:
        model: any ``nn.Module``.
        sparsity: fraction of the target weights to remove, in [0, 1). For an ``N:M`` allocation it
            is implied (``1 - N/M``) and may be left out.
        method: criterion name (see :func:`prunekit.list_methods`), e.g. ``"magnitude"``.
        allocation: ``"global"``, ``"uniform"``, ``"uniform_plus"``, ``"erk"``, ``"lamp"``,
            ``"global_min_keep"``, ``"per_row"`` or an ``"N:M"`` pattern such as ``"2:4"``.
        targets: which weights may be pruned (default: Linear / Conv / ConvTranspose weights).
        masks: masks of an earlier round; pruned entries stay pruned (masks only shrink).
        min_keep: with ``global``, ``global_min_keep`` or ``lamp``: weights every layer keeps
            (an int count, or a float fraction of each layer, rounded up).
        data: batches for data-driven criteria.
        seed: seeds random criteria and the threshold sample (results are deterministic).
        criterion_options: keyword options for the criterion.

    Raises:
        ValueError / TypeError: bad arguments, named in the message; the model is left unchanged.
    """
    result = compute_masks(
        model,
        sparsity,
        method,
        allocation,
        targets=targets,
        masks=masks,
        min_keep=min_keep,
        data=data,
        seed=seed,
        criterion_options=criterion_options,
    )
    result.apply(model)
    return result


def pruning_plan(
    model: nn.Module,
    sparsity: float | None = None,
    method: str = "magnitude",
    allocation: str = "global",
    **kwargs: Any,
) -> dict[str, tuple[int, int]]:
    """Per-layer ``(parameters, to prune)`` without changing the model (for dry runs)."""
    params, context, allocation = _prepare(
        model,
        sparsity,
        method,
        allocation,
        kwargs.pop("targets", None),
        kwargs.pop("masks", None),
        kwargs.pop("min_keep", None),
        kwargs.pop("data", None),
        kwargs.pop("seed", 0),
        kwargs.pop("criterion_options", None),
    )
    if kwargs:
        raise TypeError(f"pruning_plan: unexpected arguments {sorted(kwargs)}")
    counts = plan_counts(allocation, context)
    return {n: (params[n].numel(), counts[n]) for n in params}
