"""Importance of the components of a channel group (higher = more important).

Each criterion scores every member tensor of a group per component, then the member scores are
reduced (``sum`` / ``mean`` / ``max``) and optionally normalised within the group so that groups
of different sizes compare in global allocation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from prunekit.criteria.registry import KindView, register_criterion
from prunekit.structured.groups import ChannelGroup

__all__ = [
    "STRUCTURED_CRITERIA",
    "group_importance",
    "list_structured_criteria",
    "normalize_scores",
]

# The structured criteria of the one registry (kind "structured"): ``get`` gives the function.
STRUCTURED_CRITERIA = KindView("structured", argument="criterion")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def list_structured_criteria() -> list[str]:
    """Names accepted by ``criterion=`` of :func:`prunekit.structured.prune`."""
    return STRUCTURED_CRITERIA.names()


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    found = dict(model.named_parameters())
    return found


def _is_norm_scale(model: nn.Module, name: str) -> bool:
    if not name.endswith(".weight"):
        return False
    try:
        module = model.get_submodule(name.rsplit(".", 1)[0])
    except AttributeError:
        return False
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def _scored_members(model: nn.Module, group: ChannelGroup, params: dict[str, Tensor]):
    """Weight tensors of a group (biases and running statistics carry no importance)."""
    for member in group.members:
        name, axis = member
        p = params.get(name)
        if p is None or name.endswith("bias"):
            continue
        yield member, p, axis


def _group_device(group: ChannelGroup, params: dict[str, Tensor]) -> torch.device:
    """The device of the group's tensors (the CPU for a group that holds none)."""
    for name, _axis in group.members:
        if name in params:
            return params[name].device
    return torch.device("cpu")


def _per_component(group: ChannelGroup, member, values: Tensor) -> Tensor:
    """Sum per-index values (along the member axis) into per-component values."""
    return values[group.member_index(member).to(values.device)].sum(1)


def _axis_reduce(p: Tensor, axis: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    t = p.detach().float().movedim(axis, 0).reshape(p.shape[axis], -1)
    return fn(t).sum(1)


@register_criterion("l1", kind="structured")
def l1(model: nn.Module, group: ChannelGroup, params: dict[str, Tensor], **_) -> list[Tensor]:
    """L1 norm of every coupled weight slice (Li et al. 2017, group form of Fang et al. 2023)."""
    return [
        _per_component(group, m, _axis_reduce(p, ax, torch.abs))
        for m, p, ax in _scored_members(model, group, params)
    ]


@register_criterion("l2", kind="structured")
def l2(model: nn.Module, group: ChannelGroup, params: dict[str, Tensor], **_) -> list[Tensor]:
    """L2 norm of every coupled weight slice."""
    return [
        _per_component(group, m, _axis_reduce(p, ax, torch.square)).sqrt()
        for m, p, ax in _scored_members(model, group, params)
    ]


@register_criterion("bn_scale", kind="structured")
def bn_scale(model: nn.Module, group: ChannelGroup, params: dict[str, Tensor], **_) -> list[Tensor]:
    """|gamma| of the normalisation layers in the group (Network Slimming); L1 if there are none."""
    scores = [
        _per_component(group, m, p.detach().float().abs())
        for m, p, ax in _scored_members(model, group, params)
        if p.dim() == 1 and _is_norm_scale(model, m[0])
    ]
    return scores or l1(model, group, params)


@register_criterion("taylor", kind="structured", requires_data=True)  # gradients
def taylor(model: nn.Module, group: ChannelGroup, params: dict[str, Tensor], **_) -> list[Tensor]:
    """First-order Taylor |sum w * dL/dw| per component (Molchanov et al. 2019); needs gradients."""
    scores = []
    for m, p, ax in _scored_members(model, group, params):
        if p.grad is None:
            raise ValueError(
                f"criterion: 'taylor' needs gradients but {m[0]!r} has none; pass `loss_fn` or "
                "call loss.backward() before pruning"
            )
        prod = (p.detach() * p.grad.detach()).float()
        per_index = prod.movedim(ax, 0).reshape(p.shape[ax], -1).sum(1)
        scores.append(_per_component(group, m, per_index).abs())
    return scores


@register_criterion("fpgm", kind="structured")
def fpgm(model: nn.Module, group: ChannelGroup, params: dict[str, Tensor], **_) -> list[Tensor]:
    """Distance to the geometric median of the group's filters (He et al. 2019): redundant = low."""
    scores = []
    for m, p, ax in _scored_members(model, group, params):
        t = p.detach().float().movedim(ax, 0).reshape(p.shape[ax], -1)
        vecs = t[group.member_index(m).to(t.device)].reshape(group.size, -1)
        scores.append(torch.cdist(vecs[None], vecs[None])[0].sum(1))
    return scores


@register_criterion("random", kind="structured")
def random(
    model: nn.Module, group: ChannelGroup, params: dict[str, Tensor], *, generator=None, **_
) -> list[Tensor]:
    """Uniform random scores (a baseline), drawn on the CPU so a seed means one plan everywhere."""
    scores = torch.rand(group.size, generator=generator, device="cpu")
    return [scores.to(_group_device(group, params))]


_REDUCTIONS = {
    "sum": lambda s: s.sum(0),
    "mean": lambda s: s.mean(0),
    "max": lambda s: s.amax(0),
}


def normalize_scores(scores: Tensor, normalizer: str | None) -> Tensor:
    """Per-group normalisation: ``mean``, ``max``, ``sum``, ``standard`` (z-score) or ``None``."""
    if normalizer is None:
        return scores
    eps = 1e-12
    if normalizer == "mean":
        return scores / (scores.mean() + eps)
    if normalizer == "max":
        return scores / (scores.max() + eps)
    if normalizer == "sum":
        return scores / (scores.sum() + eps)
    if normalizer == "standard":
        return (scores - scores.mean()) / (scores.std(unbiased=False) + eps)
    raise ValueError(
        f"normalizer: expected 'mean', 'max', 'sum', 'standard' or None, got {normalizer!r}"
    )


def group_importance(
    model: nn.Module,
    group: ChannelGroup,
    criterion: str = "l1",
    reduction: str = "sum",
    normalizer: str | None = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Score each component of ``group`` (shape ``(group.size,)``, higher = keep)."""
    fn = STRUCTURED_CRITERIA.get(criterion, argument="criterion")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'sum', 'mean' or 'max', got {reduction!r}")
    parts = fn(model, group, _tensors(model), generator=generator)
    if not parts:
        return torch.zeros(group.size, device=_group_device(group, _tensors(model)))
    scores = _REDUCTIONS[reduction](torch.stack(parts))
    return normalize_scores(scores, normalizer)
