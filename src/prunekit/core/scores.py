"""Importance scores: a uniform, lazily evaluated view that the selection engine reads.

Scores are never concatenated across layers: the engine reads them one layer (or one chunk of a
layer) at a time, so a criterion that is a cheap element-wise function of the weights, such as
magnitude, costs no memory beyond one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor


class Scores:
    """Per-parameter importance scores; a higher score means more important."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> torch.Size:
        raise NotImplementedError

    def numel(self, name: str) -> int:
        return self.shape(name).numel()

    def device(self, name: str) -> torch.device:
        return self.full(name).device

    def full(self, name: str) -> Tensor:
        """The whole score tensor of one parameter (same shape as the parameter)."""
        raise NotImplementedError

    def chunk(self, name: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        """Scores of the flattened parameter between ``start`` and ``stop``.

        ``out`` is an optional buffer of the same length the implementation may write into; the
        caller must not keep the result past its next call with that buffer.
        """
        return self.full(name).reshape(-1)[start:stop]

    def gather(self, name: str, flat_index: Tensor) -> Tensor:
        """Scores at the given flat positions."""
        full = self.full(name).reshape(-1)
        return full[flat_index.to(full.device)]


class TensorScores(Scores):
    """Scores held as tensors (one per parameter), e.g. a gradient-based criterion's output."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> torch.Size:
        return self._tensors[name].shape

    def full(self, name: str) -> Tensor:
        return self._tensors[name]


class ElementwiseScores(Scores):
    """Scores computed on demand as ``fn(weights)``, chunk by chunk; nothing is stored.

    Set ``supports_out`` when ``fn`` accepts an ``out=`` tensor (as ``torch.abs`` does), so that
    chunks reuse one buffer instead of allocating.
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        fn: Callable[..., Tensor],
        supports_out: bool = False,
    ) -> None:
        self._params = dict(params)
        self._fn = fn
        self._supports_out = supports_out

    def names(self) -> list[str]:
        return list(self._params)

    def shape(self, name: str) -> torch.Size:
        return self._params[name].shape

    def device(self, name: str) -> torch.device:
        return self._params[name].device

    def full(self, name: str) -> Tensor:
        return self._fn(self._params[name].detach())

    def chunk(self, name: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        weights = self._params[name].detach().reshape(-1)[start:stop]
        if self._supports_out and out is not None and out.numel() == weights.numel():
            return self._fn(weights, out=out)
        return self._fn(weights)

    def gather(self, name: str, flat_index: Tensor) -> Tensor:
        flat = self._params[name].detach().reshape(-1)
        return self._fn(flat[flat_index.to(flat.device)])


def materialize(scores: Scores, names: Iterable[str] | None = None) -> TensorScores:
    """Evaluate lazily defined scores into tensors (for allocations that transform them)."""
    return TensorScores({n: scores.full(n) for n in (names or scores.names())})
