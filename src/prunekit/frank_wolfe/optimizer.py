"""Stochastic Frank-Wolfe (SFW) as a ``torch.optim.Optimizer`` with one constraint per group.

For a group with constraint C (Zimmer, Spiegel and Pokutta, arXiv 2205.11921)::

    m   <- mu * m + (1 - mu) * g          (m starts at the first gradient)
    v   <- LMO_C(m) = argmin_{v in C} <v, m>
    eta <- step size (see ``rescale``)
    theta <- (1 - eta) * theta + eta * v

A convex combination of two points of C stays in C, so a feasible start stays feasible: call
:meth:`SFW.make_feasible` once before training. Groups with ``constraint=None`` take a plain
momentum SGD step ``theta <- theta - lr * m`` (for parameters one does not want to constrain).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from prunekit.frank_wolfe.constraints import Constraint

RESCALE_MODES = ("gradient", "diameter", "fast_gradient", None)


class SFW(torch.optim.Optimizer):
    """Stochastic Frank-Wolfe with per-group constraints.

    Args:
        params: parameters or parameter-group dicts. Group keys: ``constraint`` (a
            :class:`~prunekit.frank_wolfe.constraints.Constraint` or None), ``lr``, ``momentum``,
            ``rescale``, ``k_delay``.
        lr: the Frank-Wolfe learning rate eta (for ``constraint=None`` groups: an SGD step size).
        momentum: mu in ``m <- mu m + (1 - mu) g``; 0 uses the raw gradient.
        rescale: how eta becomes the step size eta_t in [0, 1]:
            ``"gradient"``: eta_t = clip(eta * ||m||_2 / ||theta - v||_2, 0, 1) (default);
            ``"diameter"``: eta_t = clip(eta / D, 0, 1) with D the set's L2 diameter;
            ``"fast_gradient"``: eta_t = clip(eta * ||m||_2 / (D / 2), 0, 1);
            ``None``: eta_t = eta, which must lie in [0, 1].
        constraint: default constraint for groups that do not name one.
        k_delay: number of steps during which a k-constraint is replaced by its full-dimensional
            relaxation of the same L2 diameter (k = n); when the delay ends the group is rescaled
            into the k-constrained set (which is smaller) and Frank-Wolfe continues there.

    Norms in ``"gradient"`` mode are taken over the whole group. A zero momentum (no gradient
    yet) leaves the group unchanged rather than shrinking it towards the vertex 0.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        rescale: str | None = "gradient",
        constraint: Constraint | None = None,
        k_delay: int = 0,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, rescale=rescale, constraint=constraint, k_delay=k_delay
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group, len(self.param_groups) - 1)
        constraint = group["constraint"]
        if constraint is not None and constraint.shapes != [p.shape for p in group["params"]]:
            group["constraint"] = constraint.bind(group["params"])
        group.setdefault("step", 0)
        group.setdefault("relaxed", None)

    def active_constraint(self, group: dict[str, Any]) -> Constraint | None:
        """The set the group is constrained to now (its relaxation during the k delay)."""
        constraint = group["constraint"]
        if constraint is None:
            return None
        if constraint.uses_k and group["step"] < group["k_delay"]:
            if group["relaxed"] is None:
                group["relaxed"] = constraint.relaxed()
            return group["relaxed"]
        return constraint

    @torch.no_grad()
    def make_feasible(self) -> list[float]:
        """Rescale every constrained group into its current set; return the factors (1 = inside)."""
        factors = []
        for group in self.param_groups:
            constraint = self.active_constraint(group)
            if constraint is not None:
                factors.append(constraint.make_feasible(group["params"]))
        return factors

    @torch.no_grad()
    def feasibility(self) -> list[float | None]:
        """Per group: norm / radius of the current set (at most 1 when feasible; None if free)."""
        out: list[float | None] = []
        for group in self.param_groups:
            constraint = self.active_constraint(group)
            out.append(
                None if constraint is None else constraint.norm(group["params"]) / constraint.radius
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state without the constraint objects (configuration, not state).

        Everything left is tensors and plain Python values, so it can be stored without pickle;
        :meth:`load_state_dict` keeps this optimizer's constraints.
        """
        state = super().state_dict()
        for group in state["param_groups"]:
            group.pop("constraint", None)
            group.pop("relaxed", None)
        # the LMO's warm-start state is a nested dict: flatten it to "lmo.<key>" entries so that
        # every value is a tensor or a plain value (checkpoints store them without pickle)
        # (copies: the packed entries are the live per-parameter state dicts)
        state["state"] = {index: dict(entry) for index, entry in state["state"].items()}
        for entry in state["state"].values():
            lmo = entry.pop("lmo", None)
            if isinstance(lmo, dict):
                entry["lmo"] = {k: v for k, v in lmo.items() if not isinstance(v, Tensor)}
                for key, value in lmo.items():
                    if isinstance(value, Tensor):
                        entry[f"lmo.{key}"] = value
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        constraints = [group["constraint"] for group in self.param_groups]
        state_dict = dict(state_dict)
        unflattened = {}
        for index, entry in state_dict.get("state", {}).items():
            entry = dict(entry)
            flat = [k for k in entry if k.startswith("lmo.")]
            if flat or "lmo" in entry:
                lmo = dict(entry.pop("lmo", None) or {})
                for key in flat:
                    lmo[key[len("lmo.") :]] = entry.pop(key)
                entry["lmo"] = lmo
            unflattened[index] = entry
        state_dict["state"] = unflattened
        super().load_state_dict(state_dict)
        for group, constraint in zip(self.param_groups, constraints):
            group["constraint"] = constraint
            group["relaxed"] = None

    @torch.no_grad()
    def reset_momentum(self) -> None:
        """Forget the momentum buffers (useful right after pruning)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].pop("momentum_buffer", None)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        constraint = self.active_constraint(group)
        if constraint is not None and len(params) != len(group["params"]):
            # the LMO couples all tensors of a group: a missing gradient counts as zero
            params = list(group["params"])
        directions = []
        mu = group["momentum"]
        for p in params:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if grad.is_sparse:
                raise RuntimeError("SFW does not support sparse gradients")
            if mu == 0:
                directions.append(grad)
                continue
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(mu).add_(grad, alpha=1.0 - mu)
            directions.append(buf)

        group["step"] += 1
        if constraint is None:
            torch._foreach_add_(params, directions, alpha=-group["lr"])
            return
        grad_norm = _norm_of(directions)
        if grad_norm == 0.0:
            self._after_step(group)
            return
        lmo_state = self.state[params[0]].setdefault("lmo", {})
        vertices = constraint.lmo(directions, lmo_state)
        eta = group["lr"]
        mode = group["rescale"]
        if mode == "gradient":
            gap = math.sqrt(sum(float((p - v).pow(2).sum()) for p, v in zip(params, vertices)))
            eta = eta * grad_norm / gap if gap > 0 else 0.0
        elif mode == "diameter":
            eta = eta / constraint.diameter
        elif mode == "fast_gradient":
            eta = eta * grad_norm / (constraint.diameter / 2.0)
        eta = min(max(eta, 0.0), 1.0)
        group["last_eta"] = eta
        if eta > 0.0:
            # theta <- (1 - eta) theta + eta v
            torch._foreach_lerp_(params, vertices, eta)
        self._after_step(group)

    def _after_step(self, group: dict[str, Any]) -> None:
        # the step that ends the k delay moves the group into the (smaller) k-constrained set
        constraint = group["constraint"]
        if constraint is not None and constraint.uses_k and group["step"] == group["k_delay"] > 0:
            constraint.make_feasible(group["params"])


def _norm_of(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


def _validate_group(group: dict[str, Any], index: int) -> None:
    where = f"param_groups[{index}]"
    lr, mu, mode, delay = group["lr"], group["momentum"], group["rescale"], group["k_delay"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr: expected a non-negative number in {where}, got {lr!r}")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0.0 <= mu < 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1) in {where}, got {mu!r}")
    if mode not in RESCALE_MODES:
        raise ValueError(
            f"rescale: expected one of 'gradient', 'diameter', 'fast_gradient' or None in {where}, "
            f"got {mode!r}"
        )
    if mode is None and group["constraint"] is not None and lr > 1.0:
        raise ValueError(
            f"lr: with rescale=None the step size must lie in [0, 1] ({where}), got {lr}"
        )
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ValueError(f"k_delay: expected a non-negative int in {where}, got {delay!r}")
    constraint = group["constraint"]
    if constraint is not None and not isinstance(constraint, Constraint):
        raise TypeError(
            f"constraint: expected a prunekit Constraint or None in {where}, "
            f"got {type(constraint).__name__}"
        )
