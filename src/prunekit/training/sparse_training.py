"""Dynamic sparse training: RigL and GraNet, driven from any training loop.

Both objects own a :class:`~prunekit.core.masks.MaskSet` and keep it enforced after every
``optimizer.step()`` (pruned weights and their optimizer state stay zero). Call them after
``loss.backward()`` and before ``optimizer.step()``; they return whether the step should proceed::

    rigl = RigL(model, optimizer, sparsity=0.9, t_end=int(0.75 * total_steps), delta_t=100)
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        if rigl.step():            # False on a mask update: those gradients chose the new mask
            optimizer.step()

The regrowth score needs the dense gradient, including at pruned positions. It is there for free:
pruned weights are zeros, not detached entries, so autograd computes their gradients like any
other; nothing is hooked. At an update:

* each layer drops the ``n`` active weights of smallest magnitude and regrows ``n`` positions of
  largest ``|grad|`` among those that were already inactive before the update (a position dropped
  in this update is never regrown in it), so every layer's count, and the total sparsity, is
  exact between updates;
* regrown weights start at zero and their optimizer state (momentum, Adam moments) is reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.core.prune import compute_masks
from prunekit.core.scores import ElementwiseScores
from prunekit.core.selection import keep_masks_lowest_pruned
from prunekit.core.targets import Targets


def cosine_decay(step: int, initial: float, t_end: int) -> float:
    """``initial/2 · (1 + cos(π · step / t_end))``: the RigL / GraNet drop-fraction schedule."""
    return initial / 2.0 * (1.0 + math.cos(math.pi * min(step, t_end) / t_end))


def gmp_sparsity(step: int, initial: float, final: float, t_start: int, t_stop: int) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(t_stop − t_0))³, clamped."""
    if step <= t_start:
        return initial
    if step >= t_stop:
        return final
    progress = (step - t_start) / (t_stop - t_start)
    return final + (initial - final) * (1.0 - progress) ** 3


def drop_and_regrow(
    weight: Tensor, grad: Tensor, mask: Tensor, count: int, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Drop the ``count`` smallest-magnitude active weights, regrow ``count`` largest ``|grad|``.

    Regrowth only considers positions inactive in ``mask`` and not in ``exclude`` (positions
    removed earlier in the same update). ``count`` is reduced to what both sides allow, so the
    number of active weights never changes. Ties go to the lower flat index.

    Returns:
        ``(new_mask, dropped, grown)`` as boolean tensors of the weight's shape.
    """
    flat_mask = mask.reshape(-1)
    candidates = ~flat_mask
    if exclude is not None:
        candidates = candidates & ~exclude.reshape(-1)
    count = min(count, int(flat_mask.sum()), int(candidates.sum()))
    dropped = torch.zeros_like(flat_mask)
    grown = torch.zeros_like(flat_mask)
    if count > 0:
        magnitude = weight.detach().abs().reshape(-1).double()
        magnitude = magnitude.masked_fill(~flat_mask, math.inf)
        dropped[magnitude.sort(stable=True).indices[:count]] = True
        growth = grad.detach().abs().reshape(-1).double()
        growth = growth.masked_fill(~candidates, -math.inf)
        grown[(-growth).sort(stable=True).indices[:count]] = True
    new_mask = (flat_mask & ~dropped) | grown
    shape = mask.shape
    return new_mask.reshape(shape), dropped.reshape(shape), grown.reshape(shape)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _check_fraction(value: Any, name: str, upper_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if math.isnan(value) or not ok:
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name}: expected a number in {bound}, got {value}")
    return float(value)


class DynamicSparseTraining:
    """Shared machinery: owns the masks, enforces them, and counts steps.

    Subclasses decide when an update happens (:meth:`is_update_step`) and what it does
    (:meth:`update`). ``last_update`` maps each layer to ``(dropped, grown)`` boolean tensors of
    the latest update; ``history`` keeps one summary dict per update.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if not isinstance(masks, MaskSet):
            raise TypeError(f"masks: expected a MaskSet, got {type(masks).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.masks = masks
        self.params = masks.validate(model)
        self.step_count = 0
        self.last_update: dict[str, tuple[Tensor, Tensor]] = {}
        self.history: list[dict[str, Any]] = []
        self._enforcer = masks.attach(optimizer, model)

    # ------------------------------------------------------------------ loop interface
    def step(self) -> bool:
        """Advance one training step; on an update step change the masks and return False.

        Call after ``loss.backward()`` and before ``optimizer.step()``; run the optimizer step
        only when this returns True.
        """
        self.step_count += 1
        if not self.is_update_step(self.step_count):
            return True
        missing = [n for n, p in self.params.items() if p.grad is None]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__}.step(): {missing[0]!r} has no gradient; call step() after "
                "loss.backward() and before optimizer.zero_grad()"
            )
        self.update(self.step_count)
        return False

    __call__ = step

    def is_update_step(self, step: int) -> bool:
        raise NotImplementedError

    def update(self, step: int) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        """Stop enforcing the masks after optimizer steps."""
        self._enforcer.remove()

    def _reattach(self) -> None:
        # An enforcer may cache the masks (e.g. as multipliers): give it the updated ones.
        self._enforcer.remove()
        self._enforcer = self.masks.attach(self.optimizer, self.model)

    @property
    def sparsity(self) -> float:
        return self.masks.sparsity

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Step counter and masks (tensors only; save with safetensors or ``MaskSet.save``)."""
        return {"step": self.step_count, "masks": {n: m.clone() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step counter and masks saved by :meth:`state_dict`."""
        masks = state["masks"]
        if set(masks) != set(self.masks):
            raise ValueError("state: the saved masks cover different parameters")
        for name, mask in masks.items():
            if not isinstance(mask, Tensor) or mask.shape != self.masks[name].shape:
                raise ValueError(
                    f"state: mask {name!r} has shape {tuple(getattr(mask, 'shape', ()))}, "
                    f"expected {tuple(self.masks[name].shape)}"
                )
        with torch.no_grad():
            for name, mask in masks.items():
                self.masks[name].copy_(mask.to(self.masks[name].device, torch.bool))
        self.step_count = int(state["step"])
        self.masks.enforce(self.model, self.optimizer)
        self._reattach()

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _regrow(self, fraction: float, removed: Mapping[str, Tensor] | None = None) -> dict:
        """Per layer: drop ``floor(fraction · active)`` weights and regrow as many."""
        regrown = 0
        for name, param in self.params.items():
            mask = self.masks[name]
            count = math.floor(fraction * int(mask.sum()))
            exclude = removed.get(name) if removed else None
            new_mask, dropped, grown = drop_and_regrow(param, param.grad, mask, count, exclude)
            mask.copy_(new_mask)
            previous = self.last_update.get(name)
            if previous is not None:
                dropped = dropped | previous[0]
            self.last_update[name] = (dropped, grown)
            regrown += int(grown.sum())
        self._reset_regrown()
        return {"regrown": regrown}

    @torch.no_grad()
    def _reset_regrown(self) -> None:
        """Zero pruned weights and state, and the state of regrown weights (they start at 0)."""
        self.masks.enforce(self.model, self.optimizer)
        self._reattach()
        for name, param in self.params.items():
            grown = self.last_update.get(name, (None, None))[1]
            if grown is None or not grown.any():
                continue
            param[grown] = 0.0
            state = self.optimizer.state.get(param, {})
            for key, value in state.items():
                if key != "step" and isinstance(value, Tensor) and value.shape == param.shape:
                    value[grown] = 0


class RigL(DynamicSparseTraining):
    """RigL (Evci et al. 2020): fixed sparsity, magnitude drop and gradient regrowth.

    Every ``delta_t`` steps while ``step < t_end``, each layer drops ``floor(α_t · active)`` of its
    smallest-magnitude weights and regrows as many zero positions with the largest ``|grad|``;
    ``α_t = alpha/2 · (1 + cos(π t / t_end))``.

    Args:
        model, optimizer: the network and its optimizer (masks are enforced after its steps).
        sparsity: total sparsity; the initial mask is random with ``allocation`` densities
            (default ERK). Ignored when ``masks`` is given.
        masks: an initial mask set to use instead (updated in place).
        t_end: last step at which the topology may change (RigL: 75% of training).
        delta_t: steps between updates (default 100).
        alpha: initial drop fraction (default 0.3).
        allocation: layer densities of the initial random mask (``"erk"``, ``"uniform"``, ...).
        targets: which weights are sparse (default: Linear / Conv weights).
        seed: seeds the initial random mask.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float | None = None,
        masks: MaskSet | None = None,
        t_end: int,
        delta_t: int = 100,
        alpha: float = 0.3,
        allocation: str = "erk",
        targets: Targets | None = None,
        seed: int = 0,
    ) -> None:
        self.t_end = _check_int(t_end, "t_end", 1)
        self.delta_t = _check_int(delta_t, "delta_t", 1)
        self.alpha = _check_fraction(alpha, "alpha")
        if masks is None:
            if sparsity is None:
                raise ValueError("sparsity: RigL needs a sparsity in [0, 1) or initial masks")
            masks = compute_masks(
                model, sparsity, method="random", allocation=allocation, targets=targets, seed=seed
            )
        super().__init__(model, optimizer, masks)

    def drop_fraction(self, step: int) -> float:
        return cosine_decay(step, self.alpha, self.t_end)

    def is_update_step(self, step: int) -> bool:
        return step % self.delta_t == 0 and step < self.t_end

    def update(self, step: int) -> None:
        self.last_update = {}
        fraction = self.drop_fraction(step)
        summary = self._regrow(fraction)
        self.history.append(
            {"step": step, "drop_fraction": fraction, "sparsity": self.sparsity, **summary}
        )


class GraNet(DynamicSparseTraining):
    """GraNet (Liu et al. 2021): gradual magnitude pruning plus drop-and-regrow.

    At each update step ``t`` (every ``delta_t`` steps from ``t_start`` while ``t <= t_end``, and
    at ``t_prune_end``):

    1. while ``t <= t_prune_end``, prune the smallest magnitudes over all layers (one global
       threshold) until the total sparsity is the GMP target
       ``s_t = s_f + (s_i − s_f)(1 − (t − t_start)/(t_prune_end − t_start))³``;
    2. each layer drops ``floor(r_t · active)`` more of its smallest weights and regrows as many
       zero positions with the largest ``|grad|``, never one removed in this update;
       ``r_t = regrow_fraction/2 · (1 + cos(π t / t_end))``.

    Args:
        model, optimizer: the network and its optimizer.
        final_sparsity: s_f, reached at ``t_prune_end``.
        initial_sparsity: s_i; 0 starts dense (dense-to-sparse), above 0 starts from a random
            mask with ``allocation`` densities (sparse-to-sparse, default ERK).
        t_start, t_prune_end: the gradual pruning window (steps).
        t_end: last step with drop-and-regrow (also the horizon of the cosine schedule of r).
        delta_t: steps between updates (default 100).
        regrow_fraction: r_0, the initial drop-and-regrow fraction (default 0.5).
        masks: initial masks to use instead of the ones built from ``initial_sparsity``.
        targets, allocation, seed: as for :class:`RigL`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        final_sparsity: float,
        t_prune_end: int,
        t_end: int,
        initial_sparsity: float = 0.0,
        t_start: int = 0,
        delta_t: int = 100,
        regrow_fraction: float = 0.5,
        masks: MaskSet | None = None,
        allocation: str = "erk",
        targets: Targets | None = None,
        seed: int = 0,
    ) -> None:
        self.final_sparsity = _check_fraction(final_sparsity, "final_sparsity", False)
        self.initial_sparsity = _check_fraction(initial_sparsity, "initial_sparsity", False)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity: {initial_sparsity} exceeds final_sparsity {final_sparsity}"
            )
        self.t_start = _check_int(t_start, "t_start", 0)
        self.t_prune_end = _check_int(t_prune_end, "t_prune_end", self.t_start + 1)
        self.t_end = _check_int(t_end, "t_end", 1)
        self.delta_t = _check_int(delta_t, "delta_t", 1)
        self.regrow_fraction = _check_fraction(regrow_fraction, "regrow_fraction")
        if masks is None:
            masks = compute_masks(
                model,
                self.initial_sparsity,
                method="random",
                allocation=allocation if self.initial_sparsity > 0 else "global",
                targets=targets,
                seed=seed,
            )
        super().__init__(model, optimizer, masks)
        self._total = masks.numel

    def target_sparsity(self, step: int) -> float:
        return gmp_sparsity(
            step, self.initial_sparsity, self.final_sparsity, self.t_start, self.t_prune_end
        )

    def regrow_fraction_at(self, step: int) -> float:
        return cosine_decay(step, self.regrow_fraction, self.t_end)

    def is_update_step(self, step: int) -> bool:
        # ``t_prune_end`` is always an update, so the final sparsity is reached on time even
        # when the pruning window is not a multiple of ``delta_t``.
        if step == self.t_prune_end:
            return True
        return (
            step >= self.t_start
            and (step - self.t_start) % self.delta_t == 0
            and step <= max(self.t_end, self.t_prune_end)
        )

    @torch.no_grad()
    def update(self, step: int) -> None:
        self.last_update = {}
        removed: dict[str, Tensor] = {}
        target = self.target_sparsity(step) if step <= self.t_prune_end else self.final_sparsity
        k = max(round(target * self._total), self.masks.num_pruned)
        if k > self.masks.num_pruned:
            names = list(self.params)
            new = keep_masks_lowest_pruned(
                ElementwiseScores(self.params, torch.abs), names, k, dict(self.masks.items())
            )
            for name in names:
                removed[name] = self.masks[name] & ~new[name]
                self.masks[name].copy_(new[name])
                self.last_update[name] = (removed[name], torch.zeros_like(removed[name]))
        fraction = self.regrow_fraction_at(step) if step <= self.t_end else 0.0
        summary = self._regrow(fraction, removed)
        self.history.append(
            {
                "step": step,
                "target_sparsity": target,
                "regrow_fraction": fraction,
                "sparsity": self.sparsity,
                **summary,
            }
        )
