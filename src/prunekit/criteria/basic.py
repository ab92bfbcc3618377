"""Data-free criteria: magnitude and random."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.scores import ElementwiseScores, Scores, TensorScores
from prunekit.criteria import Criterion, register_criterion


@register_criterion("magnitude")
class Magnitude(Criterion):
    """|w|: the smallest weights go first (Han et al. 2015)."""

    elementwise_of_weights = True

    def scores(self, model, params, *, data=None, seed=0) -> Scores:
        return ElementwiseScores(params, torch.abs, supports_out=True)


@register_criterion("random")
class Random(Criterion):
    """Uniform random scores from a seeded generator: the baseline every method must beat."""

    def scores(self, model: nn.Module, params, *, data=None, seed=0) -> Scores:
        generator = torch.Generator().manual_seed(seed)
        return TensorScores(
            {
                # drawn on the CPU: one seed gives the same mask on every device
                name: torch.rand(p.shape, generator=generator, device="cpu").to(p.device)
                for name, p in params.items()
            }
        )
