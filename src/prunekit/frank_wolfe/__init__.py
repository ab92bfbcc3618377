"""Compression-aware training with stochastic Frank-Wolfe (Zimmer, Spiegel and Pokutta 2022).

>>> import torch, prunekit.frank_wolfe as fw
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
>>> groups = fw.constraints_for_model(model, "k_support", k_fraction=0.1, tau=5.0)
>>> opt = fw.SFW(groups, lr=0.1, momentum=0.9)
>>> _ = opt.make_feasible()
>>> all(ratio is None or ratio <= 1 + 1e-6 for ratio in opt.feasibility())
True
"""

from prunekit.frank_wolfe.compress import (
    LowRankResult,
    low_rank,
    prune_filters,
    prune_magnitude,
    rank_compression,
)
from prunekit.frank_wolfe.constraints import (
    CONSTRAINTS,
    Constraint,
    GroupKSupportBall,
    KSparsePolytope,
    KSupportBall,
    L1Ball,
    L2Ball,
    LInfBall,
    NuclearBall,
    SpectralKSupportBall,
    create_constraint,
    k_support_norm,
    list_constraints,
    top_singular,
)
from prunekit.frank_wolfe.groups import constraints_for_model, expected_init_norm
from prunekit.frank_wolfe.optimizer import SFW

__all__ = [
    "CONSTRAINTS",
    "SFW",
    "Constraint",
    "GroupKSupportBall",
    "KSparsePolytope",
    "KSupportBall",
    "L1Ball",
    "L2Ball",
    "LInfBall",
    "LowRankResult",
    "NuclearBall",
    "SpectralKSupportBall",
    "constraints_for_model",
    "create_constraint",
    "expected_init_norm",
    "k_support_norm",
    "list_constraints",
    "low_rank",
    "prune_filters",
    "prune_magnitude",
    "rank_compression",
    "top_singular",
]
