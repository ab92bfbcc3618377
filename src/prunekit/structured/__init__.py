"""Structured pruning that physically shrinks models: channels, filters, heads and blocks.

>>> import torch, prunekit.structured as st
>>> from prunekit.models import create_model
>>> model = create_model("resnet20")
>>> small, plan = st.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
>>> plan.macs_ratio > 2
True
"""

from prunekit.structured.allocation import allocate
from prunekit.structured.criteria import (
    STRUCTURED_CRITERIA,
    group_importance,
    list_structured_criteria,
    normalize_scores,
)
from prunekit.structured.depth import (
    block_influence,
    drop_blocks,
    find_block_container,
    prune_depth,
)
from prunekit.structured.graph import DependencyGraph, UnsupportedOperationError, build_graph
from prunekit.structured.groups import ChannelGroup, find_groups
from prunekit.structured.prune import (
    GroupChange,
    StructuredPlan,
    StructuredPruningWarning,
    plan_pruning,
    prune,
)
from prunekit.structured.serialize import load_pruned, save_pruned
from prunekit.structured.shrink import keep_indices, shrink, update_attributes
from prunekit.structured.slimming import MaskSparsity, NetworkSlimming, bn_scales

__all__ = [
    "STRUCTURED_CRITERIA",
    "ChannelGroup",
    "DependencyGraph",
    "GroupChange",
    "MaskSparsity",
    "NetworkSlimming",
    "StructuredPlan",
    "StructuredPruningWarning",
    "UnsupportedOperationError",
    "allocate",
    "block_influence",
    "bn_scales",
    "build_graph",
    "drop_blocks",
    "find_block_container",
    "find_groups",
    "group_importance",
    "keep_indices",
    "list_structured_criteria",
    "load_pruned",
    "normalize_scores",
    "plan_pruning",
    "prune",
    "prune_depth",
    "save_pruned",
    "shrink",
    "update_attributes",
]
