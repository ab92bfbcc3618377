"""Building SFW parameter groups for a model, with radii from the initialisation scale.

Radius rule (Zimmer et al., arXiv 2205.11921, following Pokutta et al. 2020): for a tensor W of a
module, estimate ``E||W_init||_2`` by re-running the module's ``reset_parameters()`` on a copy
``init_samples`` times (under a fixed seed, leaving the model and the global RNG untouched) and
averaging the L2 norms; the set's L2 diameter is ``D = 2 * tau * E||W_init||_2`` and its radius
follows from D (``r = D / 2`` for the L2, L1, k-support, group, spectral and nuclear balls; see
:mod:`prunekit.frank_wolfe.constraints` for L-infinity and the k-sparse polytope). A tensor whose
expected initial norm is 0 (a zero-initialised bias) or whose module has no
``reset_parameters`` uses its current norm, and 1.0 if that is 0 too.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from prunekit.core.targets import Targets, select_targets
from prunekit.frank_wolfe.constraints import CONSTRAINTS, Constraint, create_constraint

_K_KINDS = ("k_sparse", "k_support", "group_k_support", "spectral_k_support")
_SPECTRAL_KINDS = ("spectral_k_support", "nuclear")


@torch.no_grad()
def expected_init_norm(
    module: nn.Module, param_name: str = "weight", samples: int = 10, seed: int = 0
) -> float:
    """Mean L2 norm of ``module.<param_name>`` over ``samples`` fresh default initialisations."""
    current = getattr(module, param_name)
    if not hasattr(module, "reset_parameters") or samples < 1:
        value = float(current.detach().norm())
        return value if value > 0 else 1.0
    clone = copy.deepcopy(module).cpu()  # sample on the CPU: same law, no device RNG touched
    # torch.manual_seed also seeds the CUDA generators: restore them too when CUDA is in use
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    total = 0.0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(samples):
            clone.reset_parameters()
            total += float(getattr(clone, param_name).detach().norm())
    value = total / samples
    if value == 0.0:
        value = float(current.detach().norm()) or 1.0
    return value


def constraints_for_model(
    model: nn.Module,
    kind: str = "k_support",
    *,
    k: int | float | None = None,
    k_fraction: float | None = None,
    tau: float = 10.0,
    radius: float | None = None,
    targets: Targets | None = None,
    others: str | None = "l2",
    others_tau: float | None = None,
    others_lr: float | None = None,
    init_samples: int = 10,
    k_delay: int | None = None,
    scope: str = "layer",
    **constraint_options: Any,
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`~prunekit.frank_wolfe.SFW`: one group per parameter, or
    one group for all targets with ``scope="global"``.

    The prunable weights (``targets``, by default every Linear / Conv weight) get the constraint
    ``kind``; every other trainable parameter (biases, norm scales and shifts, embeddings) gets an
    L2 ball (``others="l2"``, the reference implementation's choice for parameters outside the
    compression constraint), another named constraint, or no constraint (``others=None``: a plain
    momentum SGD step with ``others_lr``).

    Args:
        kind: a registered constraint name (``prunekit.frank_wolfe.list_constraints()``).
        k / k_fraction: for k-constraints, the count or fraction (of entries, filters or
            singular values) per layer; ``k_fraction`` is the same as a float ``k``.
        tau: the init-scale factor; each set gets L2 diameter ``2 * tau * E||W_init||_2``.
        radius: a fixed norm radius for every target instead of the tau rule.
        others_tau: tau for the other parameters (default: ``tau``).
        init_samples: re-initialisations used to estimate ``E||W_init||_2``.
        k_delay: a per-group override of the optimizer's ``k_delay``.
        scope: ``"layer"`` (a set per target tensor) or ``"global"`` (one set over all target
            tensors together: k counts over all of them and the diameter is
            ``2 * tau * sqrt(sum_l E||W_l,init||^2)``; not for the spectral / nuclear sets).
        constraint_options: passed to the constraint (e.g. ``svd_method="power"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if kind not in CONSTRAINTS:
        raise ValueError(
            f"kind: unknown constraint {kind!r}; valid names: {', '.join(CONSTRAINTS)}"
        )
    if others is not None and others not in CONSTRAINTS:
        raise ValueError(
            f"others: unknown constraint {others!r}; valid names: {', '.join(CONSTRAINTS)} or None"
        )
    if others in _K_KINDS:
        raise ValueError(
            f"others: use a constraint without k for non-target parameters, got {others!r}"
        )
    if k is not None and k_fraction is not None:
        raise ValueError("k / k_fraction: give at most one of them")
    k_value = k_fraction if k_fraction is not None else k
    if kind in _K_KINDS and k_value is None:
        raise ValueError(f"k: constraint {kind!r} needs k (an int count) or k_fraction in (0, 1]")
    if kind not in _K_KINDS and k_value is not None:
        raise ValueError(f"k: constraint {kind!r} has no k; drop k / k_fraction")
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or tau <= 0:
        raise ValueError(f"tau: expected a positive number, got {tau!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope: expected 'layer' or 'global', got {scope!r}")
    if scope == "global" and kind in _SPECTRAL_KINDS:
        raise ValueError(f"scope: {kind!r} acts on one matrix; use scope='layer'")

    target_params = select_targets(model, targets)
    if not target_params:
        raise ValueError("model: no target parameters for the constraint (see prunekit.Targets)")
    target_ids = {id(p) for p in target_params.values()}
    owners = _owners(model)
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    shared: dict[str, Any] | None = None  # the one target group of scope="global"
    shared_sq_norm = 0.0
    for name, param in model.named_parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        module, attr = owners[name]
        is_target = id(param) in target_ids
        group_kind = kind if is_target else others
        group: dict[str, Any] = {"params": [param], "names": [name]}
        if k_delay is not None:
            group["k_delay"] = k_delay
        if group_kind is None:
            group["constraint"] = None
            if others_lr is not None:
                group["lr"] = others_lr
            groups.append(group)
            continue
        if is_target and scope == "global":
            if shared is None:
                shared = group
                groups.append(group)
            else:
                shared["params"].append(param)
                shared["names"].append(name)
            if radius is None:
                shared_sq_norm += expected_init_norm(module, attr, init_samples) ** 2
            continue
        if group_kind in _SPECTRAL_KINDS and param.dim() < 2:
            raise ValueError(f"kind: {group_kind!r} needs matrix weights, {name!r} has 1 dimension")
        options: dict[str, Any] = dict(constraint_options) if is_target else {}
        if is_target and group_kind in _K_KINDS:
            options["k"] = k_value
        if is_target and radius is not None:
            options["radius"] = radius
        else:
            t = tau if is_target or others_tau is None else others_tau
            options["diameter"] = 2.0 * t * expected_init_norm(module, attr, init_samples)
        constraint: Constraint = create_constraint(group_kind, **options).bind([param])
        group["constraint"] = constraint
        groups.append(group)
    if shared is not None:
        options = dict(constraint_options)
        if kind in _K_KINDS:
            options["k"] = k_value
        if radius is not None:
            options["radius"] = radius
        else:
            options["diameter"] = 2.0 * tau * math.sqrt(shared_sq_norm)
        shared["constraint"] = create_constraint(kind, **options).bind(shared["params"])
    return groups


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    out: dict[str, tuple[nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            out[f"{module_name}.{attr}" if module_name else attr] = (module, attr)
    return out
