"""The one signature of a layer-wise LLM rule, as the calibration engine calls it.

A rule is registered in the criteria registry with kind ``llm``; its factory is an
:class:`LLMRule`, which tells the engine what the rule needs and how to call it:

- ``needs="weights"``: nothing but the weights (no calibration pass at all, like magnitude);
- ``needs="activations"``: the per-input-feature sum of squares of the layer's inputs (Wanda);
- ``needs="hessian"``: the layer's input Hessian X^T X (SparseGPT's reconstruction).

``rule.prune(layer)`` receives a :class:`LayerInputs` and returns the keep-mask (the engine zeroes
the pruned weights) or a :class:`LayerUpdate` carrying new weights as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from prunekit.criteria.registry import CriterionEntry, get_criterion, register_criterion

__all__ = ["NEEDS", "LLMRule", "LayerInputs", "LayerUpdate", "get_rule", "register_llm_rule"]

NEEDS = ("weights", "activations", "hessian")


@dataclass(frozen=True)
class LayerInputs:
    """What the engine hands a rule for one linear layer.

    Attributes:
        name: the module's name in the model (for messages).
        weight: the weight laid out ``(out_features, in_features)``, detached; do not modify it.
        sparsity: fraction of the entries to prune (ignored when ``pattern`` is set).
        pattern: ``(n, m)``: keep n of every m consecutive inputs; None for unstructured.
        col_sq_norm: per-input-feature sum of squares of the inputs (``needs="activations"``).
        hessian: the raw sum X^T X of the inputs (``needs="hessian"``).
        options: the run's :class:`~prunekit.llm.LLMPruneConfig` (``magnitude_scope``,
            ``blocksize``, ``percdamp``, ...).
    """

    name: str
    weight: Tensor
    sparsity: float
    pattern: tuple[int, int] | None
    col_sq_norm: Tensor | None = None
    hessian: Tensor | None = None
    options: Any = None


@dataclass(frozen=True)
class LayerUpdate:
    """A rule's result when it also changes the kept weights (``weight`` is ``(out, in)``)."""

    mask: Tensor
    weight: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LLMRule:
    """A layer-wise rule: what it needs from calibration, and the call computing one layer."""

    needs: str
    prune: Callable[[LayerInputs], Tensor | LayerUpdate]

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"needs: expected one of {', '.join(NEEDS)}, got {self.needs!r}")
        if not callable(self.prune):
            raise TypeError(f"prune: expected a callable, got {type(self.prune).__name__}")

    def apply(self, layer: LayerInputs) -> LayerUpdate:
        """Run the rule; a bare mask becomes an update zeroing the pruned weights."""
        out = self.prune(layer)
        if isinstance(out, Tensor):
            out = LayerUpdate(out)
        if not isinstance(out, LayerUpdate):
            raise TypeError(
                f"method: the rule returned {type(out).__name__} for {layer.name}, "
                "expected a keep-mask Tensor or a LayerUpdate"
            )
        if out.mask.shape != layer.weight.shape:
            raise ValueError(
                f"method: the rule's mask for {layer.name} has shape {tuple(out.mask.shape)}, "
                f"expected {tuple(layer.weight.shape)}"
            )
        weight = layer.weight.float() * out.mask if out.weight is None else out.weight
        return LayerUpdate(out.mask, weight, out.info)


def register_llm_rule(
    name: str, *, needs: str, doc: str | None = None
) -> Callable[[Callable[[LayerInputs], Tensor | LayerUpdate]], Any]:
    """Decorator registering ``fn(layer: LayerInputs) -> mask | LayerUpdate`` as an LLM method.

    The name is then accepted by ``prune_llm(method=...)``, ``prunekit prune-llm --method`` and
    listed by ``prunekit list llm``; ``requires_data`` follows from ``needs``.
    """
    rule_needs = needs

    def decorator(fn: Callable[[LayerInputs], Tensor | LayerUpdate]) -> Any:
        rule = LLMRule(rule_needs, fn)
        register_criterion(
            name,
            kind="llm",
            doc=doc if doc is not None else fn.__doc__,
            requires_data=rule_needs != "weights",
            factory=rule,
        )(fn)
        return fn

    return decorator


def get_rule(name: str, argument: str = "method") -> LLMRule:
    """The :class:`LLMRule` registered as ``name`` (kind ``llm``).

    An unknown name raises ValueError listing the LLM methods; an entry whose factory is not an
    LLMRule raises TypeError naming ``argument``.
    """
    entry: CriterionEntry = get_criterion(name, kind="llm", argument=argument)
    if not isinstance(entry.factory, LLMRule):
        raise TypeError(
            f"{argument}: the LLM method {name!r} is registered with a "
            f"{type(entry.factory).__name__}, expected a prunekit.llm.LLMRule "
            "(register it with prunekit.llm.register_llm_rule)"
        )
    return entry.factory
