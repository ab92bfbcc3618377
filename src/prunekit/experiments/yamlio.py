"""Reading YAML configs safely: plain data only, YAML 1.2 numbers, bounded alias expansion.

PyYAML follows YAML 1.1, where ``2:4`` is the sexagesimal integer 124 and ``1:30.5`` a float.
Configs hold N:M patterns, so this loader reads such scalars as strings. Aliases (``*a``) are
expanded by everything that walks a config (validation, hashing, JSON), so a few nested anchors
can stand for billions of nodes: the expanded size is counted on the composed graph (linear in
the file) and a document that expands past :data:`MAX_EXPANDED_NODES` is rejected.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["MAX_EXPANDED_NODES", "YAMLError", "load_yaml"]

#: Most nodes one document may stand for once every alias is expanded.
MAX_EXPANDED_NODES = 100_000

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class YAMLError(ValueError):
    """A YAML document cannot be read as a config; the message names the source."""


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 sexagesimal numbers (``2:4`` stays the string "2:4")."""


# Keep every implicit resolver except int / float, then add them back without base 60.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Nodes in the document once aliases are expanded (memoised: linear in the graph)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLError(f"{source}: an alias refers to a node that contains it (recursion)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        # only aliases make a subtree stand for more nodes than the document holds
        if total > MAX_EXPANDED_NODES and total > len(sizes) + len(active):
            raise YAMLError(
                f"{source}: aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                "(an alias bomb?); write the values out instead"
            )
        return total

    return size(root)


def load_yaml(text: str, source: str = "config") -> Any:
    """Parse one YAML document into plain data (dicts, lists, str, int, float, bool, None).

    Raises :class:`YAMLError` naming ``source`` for invalid YAML, tags (no Python objects), a
    recursive alias or aliases expanding past :data:`MAX_EXPANDED_NODES` nodes.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise YAMLError(f"{source}: not valid YAML: {err}") from None
    finally:
        loader.dispose()
