"""RigL and GraNet as :class:`~prunekit.training.Trainer` callbacks.

The callbacks build a :class:`~prunekit.training.sparse_training.RigL` / ``GraNet`` object on the
Trainer's model and optimizer when training starts, call it after every ``backward()`` and skip
the optimizer step on a mask update (those gradients chose the new topology). The Trainer holds
the masks, so they are enforced after every step and written to its checkpoints; the callback's
step counter and update history travel in the checkpoint too, so a resumed run continues exactly.

>>> import torch
>>> from prunekit.data import TensorData
>>> from prunekit.training import Trainer
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> data = TensorData(torch.randn(64, 8), torch.randint(0, 3, (64,)))
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
>>> rigl = RigLCallback(sparsity=0.5, delta_t=4)
>>> _ = Trainer(model, data, iterations=20, batch_size=16, callbacks=[rigl]).fit()
>>> rigl.masks.num_pruned == round(0.5 * rigl.masks.numel)
True
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from prunekit.core.masks import MaskSet
from prunekit.core.targets import Targets
from prunekit.training.sparse_training import DynamicSparseTraining, GraNet, RigL
from prunekit.training.trainer import Callback, Trainer


def _fraction_of(total: int, fraction: float, name: str, minimum: int = 1) -> int:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(fraction).__name__}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name}: expected a fraction of the run in [0, 1], got {fraction}")
    return max(minimum, int(fraction * total))


class DSTCallback(Callback):
    """Shared machinery of :class:`RigLCallback` and :class:`GraNetCallback`.

    Attributes:
        dst: the :class:`~prunekit.training.sparse_training.DynamicSparseTraining` object (built in
            ``on_fit_start``); ``dst.history`` has one summary per update and ``dst.last_update``
            the ``(dropped, grown)`` masks of the latest one.
    """

    def __init__(self, masks: MaskSet | None = None) -> None:
        if masks is not None and not isinstance(masks, MaskSet):
            raise TypeError(f"masks: expected a MaskSet, got {type(masks).__name__}")
        self.initial_masks = masks
        self.dst: DynamicSparseTraining | None = None
        self._resume: dict[str, Any] | None = None

    def build(self, trainer: Trainer, masks: MaskSet | None) -> DynamicSparseTraining:
        """The sparse-training object for ``trainer`` (``masks``: initial topology or None)."""
        raise NotImplementedError

    @property
    def masks(self) -> MaskSet:
        if self.dst is None:
            raise RuntimeError(f"{type(self).__name__}: training has not started")
        return self.dst.masks

    def _sync(self, trainer: Trainer) -> None:
        # One enforcer, the Trainer's: it is the one checkpointed and broadcast under DDP. It
        # caches the masks, so it is refreshed after every update.
        assert self.dst is not None
        self.dst.remove()
        trainer.set_masks(self.dst.masks)

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.dst is not None and self._resume is None:
            return  # a second fit() on the same Trainer goes on with the same object
        if self._resume is not None:
            if trainer.masks is None:
                raise ValueError("checkpoint: a sparse-training checkpoint must hold masks")
            self.dst = self.build(trainer, trainer.masks.clone())
            self.dst.step_count = int(self._resume["step"])
            self.dst.history = list(self._resume.get("history", []))
            self._resume = None
        else:
            masks = self.initial_masks
            if masks is None and trainer.masks is not None:
                masks = trainer.masks  # the Trainer's masks are the initial topology
            self.dst = self.build(trainer, masks.clone() if masks is not None else None)
            self.dst.step_count = trainer.iteration
        self._sync(trainer)

    def on_before_step(self, trainer: Trainer, loss: Tensor) -> bool:
        assert self.dst is not None
        proceed = self.dst.step()
        if not proceed:
            self._sync(trainer)
        return proceed

    def state_dict(self) -> dict[str, Any] | None:
        if self.dst is None:
            return self._resume
        return {"step": self.dst.step_count, "history": list(self.dst.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "step" not in state:
            raise ValueError(f"state: {type(self).__name__} state needs a 'step' entry")
        self._resume = dict(state)


class RigLCallback(DSTCallback):
    """RigL (Evci et al. 2020) inside a :class:`~prunekit.training.Trainer` run.

    Args:
        sparsity: total sparsity of the initial random mask (``allocation`` densities, ERK by
            default); kept exactly for the whole run.
        masks: initial masks instead (default: the Trainer's masks if it has any).
        t_end: last step that may change the topology (default ``t_end_fraction`` of the run).
        t_end_fraction: RigL stops updating after 75% of training.
        delta_t, alpha, allocation, targets, seed: see :class:`~prunekit.training.sparse_training.RigL`.
    """

    def __init__(
        self,
        sparsity: float | None = None,
        *,
        masks: MaskSet | None = None,
        t_end: int | None = None,
        t_end_fraction: float = 0.75,
        delta_t: int = 100,
        alpha: float = 0.3,
        allocation: str = "erk",
        targets: Targets | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(masks)
        self.options = {
            "sparsity": sparsity,
            "delta_t": delta_t,
            "alpha": alpha,
            "allocation": allocation,
            "targets": targets,
            "seed": seed,
        }
        _fraction_of(1, t_end_fraction, "t_end_fraction")  # validate now, not at fit()
        self.t_end = t_end
        self.t_end_fraction = t_end_fraction

    def build(self, trainer: Trainer, masks: MaskSet | None) -> RigL:
        t_end = self.t_end
        if t_end is None:
            t_end = _fraction_of(trainer.total, self.t_end_fraction, "t_end_fraction")
        return RigL(trainer.model, trainer.optimizer, masks=masks, t_end=t_end, **self.options)


class GraNetCallback(DSTCallback):
    """GraNet (Liu et al. 2021) inside a :class:`~prunekit.training.Trainer` run.

    Step bounds default to fractions of the Trainer's run: pruning from ``start_fraction`` to
    ``prune_end_fraction`` (cubic GMP), drop-and-regrow until ``t_end_fraction``.

    Args:
        final_sparsity: reached at ``t_prune_end``.
        initial_sparsity: 0 starts dense; above 0 from a random mask (``allocation`` densities).
        masks: initial masks instead (default: the Trainer's masks if it has any).
        t_start, t_prune_end, t_end: explicit step bounds (override the fractions).
        delta_t, regrow_fraction, allocation, targets, seed: see
            :class:`~prunekit.training.sparse_training.GraNet`.
    """

    def __init__(
        self,
        final_sparsity: float,
        *,
        initial_sparsity: float = 0.0,
        masks: MaskSet | None = None,
        t_start: int | None = None,
        t_prune_end: int | None = None,
        t_end: int | None = None,
        start_fraction: float = 0.0,
        prune_end_fraction: float = 0.7,
        t_end_fraction: float = 0.75,
        delta_t: int = 100,
        regrow_fraction: float = 0.5,
        allocation: str = "erk",
        targets: Targets | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(masks)
        self.options = {
            "final_sparsity": final_sparsity,
            "initial_sparsity": initial_sparsity,
            "delta_t": delta_t,
            "regrow_fraction": regrow_fraction,
            "allocation": allocation,
            "targets": targets,
            "seed": seed,
        }
        for name, value in (
            ("start_fraction", start_fraction),
            ("prune_end_fraction", prune_end_fraction),
            ("t_end_fraction", t_end_fraction),
        ):
            _fraction_of(1, value, name)  # validate now, not at fit()
        self.bounds = (t_start, t_prune_end, t_end)
        self.fractions = (start_fraction, prune_end_fraction, t_end_fraction)

    def build(self, trainer: Trainer, masks: MaskSet | None) -> GraNet:
        t_start, t_prune_end, t_end = self.bounds
        start_f, prune_end_f, end_f = self.fractions
        if t_start is None:
            t_start = _fraction_of(trainer.total, start_f, "start_fraction", minimum=0)
        if t_prune_end is None:
            t_prune_end = max(
                t_start + 1, _fraction_of(trainer.total, prune_end_f, "prune_end_fraction")
            )
        if t_end is None:
            t_end = _fraction_of(trainer.total, end_f, "t_end_fraction")
        return GraNet(
            trainer.model,
            trainer.optimizer,
            masks=masks,
            t_start=t_start,
            t_prune_end=t_prune_end,
            t_end=t_end,
            **self.options,
        )
