"""Forgetting events (Toneva et al. 2019): correct -> incorrect transitions during training.

:class:`ForgettingTracker` holds the per-example state; :class:`ForgettingCallback` feeds it
from an ordinary :class:`~prunekit.training.Trainer` run. The callback reads the predictions of
the training forward pass (a forward hook, no extra pass) and the batch's example indices from
:meth:`Trainer.batch_indices`, so batches and every other Trainer user stay as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prunekit.data_pruning.base import ScoreContext, register_score
from prunekit.data_pruning.data import labels_of
from prunekit.data_pruning.training import train_for_score
from prunekit.training.trainer import Callback, Trainer

__all__ = ["ForgettingCallback", "ForgettingTracker"]


class ForgettingTracker:
    """Per-example forgetting counts over a sequence of presentations.

    An example is *forgotten* at a presentation where it is misclassified after being classified
    correctly at its previous presentation. Before its first presentation it counts as
    misclassified. :meth:`scores` gives the counts, ``inf`` for examples never classified
    correctly (Toneva et al. rank them as the most forgettable).
    """

    def __init__(self, num_examples: int) -> None:
        if num_examples < 0:
            raise ValueError(f"num_examples: expected >= 0, got {num_examples}")
        # per-example bookkeeping stays on the CPU whatever device the model trains on
        self.counts = torch.zeros(num_examples, dtype=torch.long, device="cpu")
        self.previous = torch.zeros(num_examples, dtype=torch.bool, device="cpu")
        self.learned = torch.zeros(num_examples, dtype=torch.bool, device="cpu")

    def update(self, indices: Tensor, correct: Tensor) -> None:
        """Record one presentation of the examples ``indices`` (``correct``: bool per example)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        ok = torch.as_tensor(correct).reshape(-1).to("cpu", torch.bool)
        if idx.numel() != ok.numel():
            raise ValueError(
                f"correct: expected one value per index ({idx.numel()}), got {ok.numel()}"
            )
        self.counts[idx] += (self.previous[idx] & ~ok).long()
        self.previous[idx] = ok
        self.learned[idx] |= ok

    def scores(self) -> Tensor:
        """Forgetting counts as float, ``inf`` where an example was never learned."""
        out = self.counts.double()
        out[~self.learned] = float("inf")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "previous": self.previous.tolist(),
            "learned": self.learned.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("counts", "previous", "learned"):
            value = torch.tensor(state[key], dtype=getattr(self, key).dtype, device="cpu")
            if value.shape != getattr(self, key).shape:
                raise ValueError(f"state: {key} has {value.numel()} entries, expected "
                                 f"{getattr(self, key).numel()}")  # fmt: skip
            setattr(self, key, value)


class ForgettingCallback(Callback):
    """Feeds a :class:`ForgettingTracker` from the training predictions of a Trainer run.

    Args:
        labels: the label of every training example (``labels_of(train_data)``).

    The tracker state is part of the Trainer's checkpoints, so a resumed run counts exactly as
    an uninterrupted one. Single-process only (under DDP each rank sees its own examples).
    """

    def __init__(self, labels: Tensor) -> None:
        self.labels = torch.as_tensor(labels).reshape(-1).long().cpu()
        self.tracker = ForgettingTracker(self.labels.numel())
        self._outputs: Tensor | None = None
        self._handle: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if len(trainer.train_data) != self.labels.numel():
            raise ValueError(
                f"labels: {self.labels.numel()} labels for {len(trainer.train_data)} examples"
            )

        def keep(_module: Any, _inputs: Any, output: Tensor) -> None:
            self._outputs = output.detach()

        self._handle = trainer.model.register_forward_hook(keep)

    def on_before_step(self, trainer: Trainer, loss: Tensor) -> None:
        if self._outputs is None:
            return None
        idx = trainer.batch_indices(trainer.iteration)
        predicted = self._outputs.argmax(dim=-1).cpu()
        self.tracker.update(idx, predicted == self.labels[idx])
        self._outputs = None
        return None

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)


@register_score(
    "forgetting",
    doc="Forgetting: count of correct -> incorrect transitions during a training run.",
)
def forgetting(ctx: ScoreContext, *, epochs: float | None = None, runs: int = 1) -> Tensor:
    """Toneva et al. 2019: forgetting events recorded by :class:`ForgettingCallback` during
    ``runs`` trainings of ``epochs`` epochs (default: the full ``train.epochs``); mean over
    runs, ``inf`` for examples never learned."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs: expected a positive integer, got {runs!r}")
    ep = ctx.train.epochs if epochs is None else epochs
    if not isinstance(ep, (int, float)) or isinstance(ep, bool) or ep <= 0:
        raise ValueError(f"epochs: expected a positive number, got {ep!r}")
    labels = labels_of(ctx.data)
    total = torch.zeros(len(ctx.data), dtype=torch.float64, device="cpu")
    for r in range(runs):
        callback = ForgettingCallback(labels)
        train_for_score(ctx, ctx.seed + r, float(ep), [callback])
        total += callback.tracker.scores()
    return (total / runs).float()
