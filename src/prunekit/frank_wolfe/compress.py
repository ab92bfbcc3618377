"""Compressing a (Frank-Wolfe trained) model after training.

* :func:`prune_magnitude`: unstructured, through :func:`prunekit.prune` (returns a MaskSet).
* :func:`prune_filters`: structured, zeroes whole output filters (rows of ``W.flatten(1)``) with
  the smallest L2 norms (returns a MaskSet whose masks are constant per filter).
* :func:`low_rank`: replaces each weight by its truncated SVD; with ``factorize=True`` a Linear
  (or a Conv with ``groups=1``) becomes two smaller layers, which is what makes it cheaper.

Retraining afterwards is the caller's loop: attach the masks (``masks.attach(optimizer, model)``)
or train the factorised layers as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.prune import prune
from prunekit.core.targets import Targets, select_targets


def prune_magnitude(
    model: nn.Module,
    sparsity: float,
    allocation: str = "global",
    targets: Targets | None = None,
) -> MaskSet:
    """Unstructured magnitude pruning in place (``prunekit.prune(..., method="magnitude")``)."""
    return prune(model, sparsity, method="magnitude", allocation=allocation, targets=targets)


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


@torch.no_grad()
def prune_filters(
    model: nn.Module,
    sparsity: float,
    allocation: str = "uniform",
    targets: Targets | None = None,
) -> MaskSet:
    """Zero the output filters with the smallest L2 norms, in place; return their masks.

    Args:
        sparsity: fraction of filters removed (per layer for ``"uniform"``, over all target
            layers for ``"global"``). Every layer keeps at least one filter.
        allocation: ``"uniform"`` or ``"global"`` (one threshold on raw filter norms; meaningful
            when the layers share a scale, as under one group k-support constraint).

    Biases of removed filters are not touched (use the structured-pruning tools to shrink layers).
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    if allocation not in ("uniform", "global"):
        raise ValueError(f"allocation: expected 'uniform' or 'global', got {allocation!r}")
    params = select_targets(model, targets)
    if not params:
        raise ValueError("model: no target parameters (see prunekit.Targets)")
    norms = {n: p.detach().reshape(p.shape[0], -1).norm(dim=1) for n, p in params.items()}
    keep: dict[str, Tensor] = {}
    if allocation == "uniform":
        for name, values in norms.items():
            n_keep = max(1, values.numel() - int(round(sparsity * values.numel())))
            keep[name] = _top_rows(values, n_keep)
    else:
        total = sum(v.numel() for v in norms.values())
        n_prune = int(round(sparsity * total))
        allv = torch.cat([v.float().cpu() for v in norms.values()])
        order = torch.argsort(allv, stable=True)
        pruned = torch.zeros(total, dtype=torch.bool, device=allv.device)
        pruned[order[:n_prune]] = True
        offset = 0
        for name, values in norms.items():
            rows = ~pruned[offset : offset + values.numel()]
            offset += values.numel()
            if not rows.any():  # never empty a layer
                rows[int(values.argmax())] = True
            keep[name] = rows.to(values.device)
    masks = MaskSet()
    for name, param in params.items():
        shape = (param.shape[0],) + (1,) * (param.dim() - 1)
        masks[name] = keep[name].reshape(shape).expand_as(param).clone()
    masks.apply(model)
    return masks


def _top_rows(values: Tensor, n_keep: int) -> Tensor:
    rows = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    rows[values.topk(n_keep).indices] = True
    return rows


@dataclass
class LowRankResult:
    """What :func:`low_rank` did: the rank per weight and the parameter counts."""

    ranks: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    factorized: list[str] = field(default_factory=list)


def _rank_for(
    s: Tensor, rank: int | None, rank_fraction: float | None, energy: float | None
) -> int:
    full = s.numel()
    if rank is not None:
        return max(1, min(int(rank), full))
    if rank_fraction is not None:
        return max(1, min(full, int(round(rank_fraction * full))))
    sq = s.double().pow(2)
    cum = sq.cumsum(0) / sq.sum().clamp(min=1e-300)
    return max(
        1,
        min(
            full,
            int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype, device=cum.device)))
            + 1,
        ),
    )


@torch.no_grad()
def low_rank(
    model: nn.Module,
    rank: int | None = None,
    *,
    rank_fraction: float | None = None,
    energy: float | None = None,
    targets: Targets | None = None,
    factorize: bool = False,
) -> LowRankResult:
    """Replace each target weight ``W`` (seen as ``W.flatten(1)``) by its best rank-r approximation.

    Give exactly one of ``rank`` (the same r everywhere, capped by each matrix), ``rank_fraction``
    (r = round(fraction * min(rows, cols)), at least 1) or ``energy`` (the smallest r keeping that
    share of ``sum sigma_i^2``). With ``factorize=False`` the weights are overwritten in place
    (same shapes; nothing is cheaper yet). With ``factorize=True`` each factorisable layer whose
    rank makes it smaller is replaced by two layers: a Linear becomes
    ``Linear(in, r, bias=False) -> Linear(r, out)``, a Conv with ``groups=1`` becomes
    ``Conv(in, r, kernel, stride, padding, dilation) -> Conv(r, out, 1)``; other layers (and a
    model that is itself one layer) are overwritten in place. The result holds the ranks and the
    parameter counts before and after.
    """
    given = [x is not None for x in (rank, rank_fraction, energy)]
    if sum(given) != 1:
        raise ValueError("rank / rank_fraction / energy: give exactly one of them")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank: expected a positive int, got {rank!r}")
    if rank_fraction is not None and not 0.0 < float(rank_fraction) <= 1.0:
        raise ValueError(f"rank_fraction: expected a number in (0, 1], got {rank_fraction!r}")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy: expected a number in (0, 1], got {energy!r}")
    params = select_targets(model, targets)
    if not params:
        raise ValueError("model: no target parameters (see prunekit.Targets)")
    modules = {f"{n}.weight" if n else "weight": m for n, m in model.named_modules()}
    result = LowRankResult(params_before=sum(p.numel() for p in model.parameters()))
    for name, param in params.items():
        if param.dim() < 2:
            continue
        matrix = param.detach().reshape(param.shape[0], -1)
        u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
        r = _rank_for(s, rank, rank_fraction, energy)
        result.ranks[name] = r
        left = (u[:, :r] * s[:r]).to(param.dtype)  # out x r
        right = vh[:r].to(param.dtype)  # r x (in * kernel)
        module = modules.get(name)
        rows, cols = matrix.shape
        if factorize and module is not None and "." in name and r * (rows + cols) < rows * cols:
            replacement = _factorized(module, left, right)
            if replacement is not None:
                _set_module(model, name.rsplit(".", 1)[0], replacement)
                result.factorized.append(name)
                continue
        param.copy_((left @ right).reshape(param.shape))
    result.params_after = sum(p.numel() for p in model.parameters())
    return result


def _factorized(module: nn.Module, left: Tensor, right: Tensor) -> nn.Module | None:
    r = left.shape[1]
    bias = getattr(module, "bias", None)
    if type(module) is nn.Linear:
        first = nn.Linear(module.in_features, r, bias=False)
        second = nn.Linear(r, module.out_features, bias=bias is not None)
        first.weight.copy_(right)
        second.weight.copy_(left)
    elif type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.groups == 1:
        conv = type(module)
        first = conv(
            module.in_channels,
            r,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=False,
            padding_mode=module.padding_mode,
        )
        second = conv(r, module.out_channels, 1, bias=bias is not None)
        first.weight.copy_(right.reshape(first.weight.shape))
        second.weight.copy_(left.reshape(second.weight.shape))
    else:
        return None
    if bias is not None:
        second.bias.copy_(bias.detach())
    weight = module.weight
    return nn.Sequential(first, second).to(device=weight.device, dtype=weight.dtype)


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent = model
    parts = path.split(".")
    for part in parts[:-1]:
        parent = getattr(parent, part)
    setattr(parent, parts[-1], new)


def rank_compression(result: LowRankResult) -> float:
    """Parameter ratio after / before of a :func:`low_rank` call (1.0 when nothing shrank)."""
    return result.params_after / result.params_before if result.params_before else math.nan
