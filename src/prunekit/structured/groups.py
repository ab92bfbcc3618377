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
    ``indices[k][member]`` are the indices of component ``k`` along that member axis.
    """

    members: list[tuple[str, int]]
    indices: list[dict[tuple[str, int], Tensor]] = field(default_factory=list)
    prunable: bool = True

    @property
    def name(self) -> str:
        """A readable name: the first member tensor that produces these channels."""
        return self.members[0][0].rsplit(".", 1)[0] if self.members else "?"

    @property
    def size(self) -> int:
        """Number of components (channels, heads) in the group."""
        return len(self.indices)

    @property
    def unit(self) -> int:
        """Channels per component along the widest member axis (1 for channels, head_dim for heads)."""
        if not self.indices:
            return 1
        return max(int(ix.numel()) for ix in self.indices[0].values())

    def member_index(self, member: tuple[str, int]) -> Tensor:
        """Indices along ``member`` as a ``(size, unit_of_member)`` matrix (one row per component)."""
        cache = self.__dict__.setdefault("_index_cache", {})
        if member not in cache:
            cache[member] = torch.stack([comp[member] for comp in self.indices])
        return cache[member]

    def __repr__(self) -> str:
        state = "" if self.prunable else ", fixed"
        return f"ChannelGroup({self.name!r}, {self.size} x {self.unit}, {len(self.members)} tensors{state})"


def find_groups(graph: DependencyGraph) -> list[ChannelGroup]:
    """Split the graph into channel groups (prunable ones first, largest first)."""
    uf = graph.uf
    comps: dict[int, dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(list))
    producer_roots: set[int] = set()
    for key, dim in graph.dims.items():
        roots = uf.roots(dim.ids).tolist()
        for index, root in enumerate(roots):
            comps[root][key].append(index)
        if dim.producer:
            producer_roots.update(roots)
    frozen = graph.frozen_roots()
    by_sig: dict[tuple, ChannelGroup] = {}
    for root in sorted(comps, key=lambda r: min(min(v) for v in comps[r].values())):
        members = comps[root]
        signature = tuple(sorted(members))
        prunable = root not in frozen and root in producer_roots
        key = (signature, prunable, tuple(len(members[m]) for m in signature))
        group = by_sig.get(key)
        if group is None:
            ordered = sorted(signature, key=lambda m: (not graph.dims[m].producer, m))
            group = by_sig[key] = ChannelGroup(ordered, [], prunable)
        group.indices.append(
            {m: torch.tensor(sorted(members[m]), dtype=torch.long) for m in signature}
        )
    groups = list(by_sig.values())
    groups.sort(key=lambda g: (not g.prunable, -g.size * g.unit))
    return groups
