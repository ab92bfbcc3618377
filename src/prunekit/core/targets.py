"""Selecting which parameters of a model may be pruned."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

#: Module types whose ``weight`` is pruned by default: not biases, norms or embeddings.
DEFAULT_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclass(frozen=True)
class Targets:
    """Which weights may be pruned.

    Args:
        module_types: module classes whose ``weight`` is a target (default: Linear, Conv and
            ConvTranspose of every dimension).
        include: regular expressions; when given, only parameter names matching one of them
            (``re.search``) are targets.
        exclude: regular expressions; parameter names matching one are never targets.
        keep_first: keep the first selected layer (in module order) dense.
        keep_last: keep the last selected layer dense.
    """

    module_types: tuple[type[nn.Module], ...] = DEFAULT_MODULE_TYPES
    include: Sequence[str] = field(default_factory=tuple)
    exclude: Sequence[str] = field(default_factory=tuple)
    keep_first: bool = False
    keep_last: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise TypeError(
                "Targets: include/exclude expect a list of regular expressions, not a str"
            )
        for key in ("include", "exclude"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(
                        f"Targets.{key}: invalid regular expression {pattern!r}: {err}"
                    ) from err
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not self.module_types:
            raise ValueError("Targets.module_types: expected at least one module class")
        object.__setattr__(self, "module_types", tuple(self.module_types))


def select_targets(model: nn.Module, targets: Targets | None = None) -> dict[str, nn.Parameter]:
    """Return the prunable parameters of ``model`` by name, in module order.

    Shared parameters (weight tying) are listed once, under their first name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    targets = targets or Targets()
    include = [re.compile(p) for p in targets.include]
    exclude = [re.compile(p) for p in targets.exclude]
    selected: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, targets.module_types):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        if include and not any(p.search(name) for p in include):
            continue
        if any(p.search(name) for p in exclude):
            continue
        seen.add(id(weight))
        selected[name] = weight
    names = list(selected)
    if targets.keep_first and names:
        selected.pop(names[0])
    if targets.keep_last and names and names[-1] in selected:
        selected.pop(names[-1])
    return selected
