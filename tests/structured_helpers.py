"""Shared helpers for the structured-pruning tests."""

from __future__ import annotations

import copy

import torch
from torch import nn

import prunekit.structured as st


def zero_pruned(model: nn.Module, groups, pruned) -> nn.Module:
    """A copy of ``model`` whose to-be-pruned channels are exactly zero everywhere they flow.

    Every coupled tensor slice is zeroed (running variances are set to 1 so BatchNorm output is
    exactly its zero shift): the copy must then compute what the physically pruned model computes.
    """
    clone = copy.deepcopy(model)
    tensors = dict(clone.named_parameters())
    tensors.update(dict(clone.named_buffers()))
    with torch.no_grad():
        for gi, positions in pruned.items():
            for member in groups[gi].members:
                name, axis = member
                rows = groups[gi].member_index(member)[positions].reshape(-1)
                t = tensors[name]
                view = t.movedim(axis, 0)
                view[rows] = 1.0 if name.endswith("running_var") else 0.0
    return clone


def check_equivalent(model: nn.Module, x, ratio=0.5, atol=1e-5, **kwargs) -> nn.Module:
    """Prune ``model`` and assert it matches the zeroed reference on ``x``; return the pruned one."""
    model.eval()
    groups, pruned, keep = st.plan_pruning(model, x, ratio, **kwargs)
    assert pruned, "nothing was pruned"
    reference = zero_pruned(model, groups, pruned)
    small = copy.deepcopy(model)
    st.shrink(small, keep)
    call = (lambda m: m(**x)) if isinstance(x, dict) else (lambda m: m(x))
    with torch.no_grad():
        want, got = call(reference), call(small)
    want = getattr(want, "logits", want)
    got = getattr(got, "logits", got)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    return small
