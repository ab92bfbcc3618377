"""One conformance check of structured pruning on one architecture (shared by the test suite and
``benchmarks/structured_coverage.py``)."""

from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

import prunekit.structured as st
from prunekit.core.metrics import count_macs, count_params


@dataclass
class Result:
    """What held for one architecture at one ratio (None: not applicable / not reached)."""

    prunes: bool = False
    macs_ratio: float = 0.0
    params_ratio: float = 0.0
    trains: bool | None = None
    equivalent: bool | None = None
    load_pruned: bool | None = None
    hf_reload: bool | None = None
    generates: bool | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""


def output(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


def statistics_groups(model: nn.Module, groups) -> set[int]:
    """Groups whose channels are normalised together (LayerNorm, RMSNorm, GroupNorm, GRN).

    Removing such a channel changes the statistics of the others, so only the other groups are
    exactly equivalent to zeroing their slices.
    """
    stats = set()
    modules = dict(model.named_modules())
    for gi, g in enumerate(groups):
        for name, _axis in g.members:
            owner = modules.get(name.rsplit(".", 1)[0]) if "." in name else model
            kind = type(owner).__name__.lower()
            if ("norm" in kind and "batchnorm" not in kind) or "grn" in kind:
                stats.add(gi)
                break
    return stats


def zero_pruned(model: nn.Module, groups, pruned) -> nn.Module:
    """A copy whose to-be-pruned slices are zero (running variances 1) in every coupled tensor."""
    clone = copy.deepcopy(model)
    tensors = dict(clone.named_parameters()) | dict(clone.named_buffers())
    with torch.no_grad():
        for gi, positions in pruned.items():
            for member in groups[gi].members:
                name, axis = member
                rows = groups[gi].member_index(member)[positions].reshape(-1)
                view = tensors[name].movedim(axis, 0)
                view[rows] = 1.0 if name.endswith("running_var") else 0.0
    return clone


def check_equivalence(model: nn.Module, inputs: dict, ratio: float) -> bool | None:
    """Pruning every group outside the normalised (residual) stream equals zeroing its slices."""
    graph = st.build_graph(model, inputs)
    groups = st.find_groups(graph)
    stats = statistics_groups(model, groups)
    ratios = {g.name: ratio for gi, g in enumerate(groups) if g.prunable and gi not in stats}
    if not ratios:
        return None  # every prunable group is normalised (ConvNeXtV2: LayerNorm and GRN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.StructuredPruningWarning)
        groups, pruned, keep = st.plan_pruning(model, inputs, ratios)
    if not pruned:
        return False
    reference = zero_pruned(model, groups, pruned)
    small = copy.deepcopy(model)
    st.shrink(small, keep)
    with torch.no_grad():
        want, got = output(reference, inputs), output(small, inputs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    return True


def _train_step(model: nn.Module, inputs: dict) -> bool:
    # Eval mode: batch-1 BatchNorm cannot use batch statistics on 1x1 feature maps.
    model.zero_grad(set_to_none=True)
    output(model, inputs).float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


def run(model: nn.Module, inputs: dict, kind: str, ratio: float, hf: bool = True) -> Result:
    """Prune ``model`` (in place) at ``ratio`` with L1 and check every conformance property."""
    res = Result()
    macs0, params0 = count_macs(model, inputs), count_params(model)
    try:
        res.equivalent = check_equivalence(model, inputs, ratio)
    except Exception as err:  # recorded, reported by the caller
        res.equivalent = False
        res.error = f"equivalence: {type(err).__name__}: {err}"[:300]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", st.StructuredPruningWarning)
        small, plan = st.prune(model, inputs, ratio=ratio)
    res.warnings = [
        str(w.message) for w in caught if issubclass(w.category, st.StructuredPruningWarning)
    ]
    res.macs_ratio, res.params_ratio = plan.macs_ratio, plan.params_ratio
    res.prunes = plan.macs_after < macs0 and plan.params_after < params0
    small.eval()
    with torch.no_grad():
        want = output(small, inputs)
    res.trains = _train_step(small, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        st.save_pruned(small, f"{tmp}/pk")
        again = st.load_pruned(f"{tmp}/pk").eval()
        with torch.no_grad():
            res.load_pruned = _same(output(again, inputs), want)
        if hf:
            try:
                small.save_pretrained(f"{tmp}/hf")
                reloaded = type(small).from_pretrained(f"{tmp}/hf").eval()
                with torch.no_grad():
                    res.hf_reload = _same(output(reloaded, inputs), want)
            except Exception:  # a config that cannot describe the pruned widths
                res.hf_reload = False
    if kind == "causal":
        out = small.generate(**inputs, max_new_tokens=3, do_sample=False)
        res.generates = tuple(out.shape) == (1, inputs["input_ids"].shape[1] + 3)
    return res
