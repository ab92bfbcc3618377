"""Channel groups: sets of coupled channels that are removed together.

A *component* is one connected set of channel elements of the dependency graph, e.g. output
channel 7 of a convolution together with BatchNorm entry 7 and input column 7 of the next layer,
or one attention head (its query/key/value rows and output-projection columns). Components that
touch the same parameter axes form a :class:`ChannelGroup` (one "layer" for allocation purposes).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prunekit.structured.graph import DependencyGraph

__all__ = ["ChannelGroup", "find_groups"]


@dataclass
class ChannelGroup:
    """Components (channels or heads) sharing the same coupled parameter axes.

    ``members`` lists the ``(tensor name, axis)`` pairs that shrink with this group;
    ``index[member]`` is a ``(size, k)`` matrix: row ``i`` holds the ``k`` indices of component
    ``i`` along that member axis.
    """

    members: list[tuple[str, int]]
    index: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    prunable: bool = True
    reasons: list[str] = field(default_factory=list)  # why a fixed group cannot shrink

    @property
    def name(self) -> str:
        """A readable name: the first member tensor that produces these channels."""
        return self.members[0][0].rsplit(".", 1)[0] if self.members else "?"

    @property
    def size(self) -> int:
        """Number of components (channels, heads) in the group."""
        return int(next(iter(self.index.values())).shape[0]) if self.index else 0

    @property
    def unit(self) -> int:
        """Channels per component along the widest member axis (1 for channels, head_dim for heads)."""
        return max((int(ix.shape[1]) for ix in self.index.values()), default=1)

    @property
    def indices(self) -> list[dict[tuple[str, int], Tensor]]:
        """Per component: member -> indices (a view of :attr:`index` one component at a time)."""
        return [{m: ix[i] for m, ix in self.index.items()} for i in range(self.size)]

    def member_index(self, member: tuple[str, int]) -> Tensor:
        """Indices along ``member`` as a ``(size, k)`` matrix (one row per component)."""
        return self.index[member]

    def __repr__(self) -> str:
        state = "" if self.prunable else ", fixed"
        return f"ChannelGroup({self.name!r}, {self.size} x {self.unit}, {len(self.members)} tensors{state})"


def find_groups(graph: DependencyGraph) -> list[ChannelGroup]:
    """Split the graph into channel groups (prunable ones first, largest first)."""
    uf = graph.uf
    keys = list(graph.dims)
    roots = {k: uf.roots(graph.dims[k].ids) for k in keys}
    producer_roots: set[int] = set()
    for k in keys:
        if graph.dims[k].producer:
            producer_roots.update(roots[k].tolist())
    why = graph.frozen_reasons()
    frozen = set(why)
    # Which members (and how many indices of each) every component touches.
    touch: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for ki, k in enumerate(keys):
        r, counts = torch.unique(roots[k], return_counts=True)
        for root, c in zip(r.tolist(), counts.tolist()):
            touch[root].append((ki, c))
    by_sig: dict[tuple, list[int]] = defaultdict(list)
    for root in sorted(touch):
        sig = tuple(touch[root])
        by_sig[(sig, root not in frozen and root in producer_roots)].append(root)
    # One rank/group lookup over all roots (groups are disjoint), so the work stays linear.
    size = len(uf.parent)
    rank = torch.full((size,), -1, dtype=torch.long)
    owner = torch.full((size,), -1, dtype=torch.long)
    entries = list(by_sig.items())
    for gi, (_, members_roots) in enumerate(entries):
        r = torch.tensor(members_roots)
        rank[r] = torch.arange(len(members_roots))
        owner[r] = gi
    groups = []
    for gi, ((sig, prunable), members_roots) in enumerate(entries):
        index = {}
        for ki, count in sig:
            k = keys[ki]
            pos = (owner[roots[k]] == gi).nonzero().flatten()
            order = torch.argsort(rank[roots[k]][pos] * (len(roots[k]) + 1) + pos)
            index[k] = pos[order].reshape(len(members_roots), count)
        ordered = sorted(index, key=lambda m: (not graph.dims[m].producer, m))
        reasons: list[str] = []
        if not prunable:
            for root in members_roots:
                for r in why.get(root, ["no layer produces these channels"]):
                    if r not in reasons:
                        reasons.append(r)
        groups.append(ChannelGroup(ordered, {m: index[m] for m in ordered}, prunable, reasons))
    groups.sort(key=lambda g: (not g.prunable, -g.size * g.unit))
    return groups
