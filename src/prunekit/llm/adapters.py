"""Model-family adapters: where the blocks are and how to run one block on captured inputs.

Nothing here hard-codes attribute paths such as ``model.model.layers``. The blocks are found
structurally (the longest ``nn.ModuleList`` whose children all share one class); an adapter only
says whether it recognises a model and, where a family differs, how to call it. A block is run on
the positional and keyword arguments the model itself passed to the first block (attention mask,
position ids, rotary embeddings ...), captured by a forward pre-hook, with the hidden states
swapped in.

Register an adapter for a new family with :func:`register_adapter`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ModelAdapter",
    "UnknownArchitectureError",
    "find_blocks",
    "get_adapter",
    "list_adapters",
    "linear_layers",
    "register_adapter",
]


class UnknownArchitectureError(ValueError):
    """No registered adapter recognises the model."""


def _hf_conv1d() -> type | None:
    # GPT-2 stores its projections in transformers' Conv1D (weight laid out in x out). If
    # transformers was never imported, no model can hold one: skip the (slow) import.
    if "transformers" not in sys.modules:
        return None
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # transformers is optional
        return None
    return Conv1D


def linear_layers(module: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Every linear-like sub-module (``nn.Linear`` and transformers' ``Conv1D``) by full name."""
    conv1d = _hf_conv1d()
    kinds: tuple[type, ...] = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, kinds) and isinstance(getattr(sub, "weight", None), nn.Parameter):
            full = f"{prefix}.{name}" if prefix and name else (prefix or name)
            out[full] = sub
    return out


def is_transposed(module: nn.Module) -> bool:
    """True for layers whose weight is stored (in_features, out_features), like HF ``Conv1D``."""
    conv1d = _hf_conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest ``nn.ModuleList`` of identical block classes (ties: the first in module order).

    Raises:
        UnknownArchitectureError: the model holds no such list.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1 or not linear_layers(module[0]):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise UnknownArchitectureError(
            f"{type(model).__name__}: found no nn.ModuleList of identical blocks holding linear "
            "layers; register an adapter with prunekit.llm.register_adapter"
        )
    return best


@dataclass
class ModelAdapter:
    """How the calibration engine drives one model family.

    Args:
        name: the adapter's name (``"llama"``, ``"gpt2"`` ...).
        matches: ``matches(model) -> bool``; True when this adapter handles the model.
        block_output: extracts the hidden states from what a block returns (a tensor, or a
            tuple whose first element is the hidden states in older transformers releases).
        causal: a decoder (next-token prediction) rather than an encoder.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    block_output: Callable[[Any], Tensor] | None = None
    causal: bool = True

    # ---------------------------------------------------------------- structure
    def blocks(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        """(dotted path, the list of transformer blocks)."""
        return find_blocks(model)

    def embeddings(self, model: nn.Module) -> list[str]:
        """Names of the embedding modules (never pruned by default)."""
        return [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]

    def head(self, model: nn.Module) -> nn.Module | None:
        """The output projection (LM head), if any; never pruned by default."""
        getter = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        if head is None:
            head = getattr(model, "lm_head", None)
        return head

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The last normalisation module outside the blocks (LayerNorm / RMSNorm)."""
        path, _ = self.blocks(model)
        found = None
        for name, module in model.named_modules():
            if name.startswith(path + ".") or name == path:
                continue
            if "norm" in type(module).__name__.lower():
                found = module
        return found

    def context_length(self, model: nn.Module) -> int | None:
        """The longest sequence the model accepts (None when unknown)."""
        config = getattr(model, "config", None)
        for key in ("max_position_embeddings", "n_positions", "block_size", "n_ctx"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def hidden_size(self, model: nn.Module) -> int | None:
        config = getattr(model, "config", None)
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ---------------------------------------------------------------- running
    def run_model(self, model: nn.Module, input_ids: Tensor) -> Any:
        """Call the full model on token ids (no key/value cache)."""
        if _accepts(model, "use_cache"):
            return model(input_ids=input_ids, use_cache=False)
        return model(input_ids)

    def logits(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        """Token logits (batch, time, vocab) from the full model."""
        out = self.run_model(model, input_ids)
        if isinstance(out, Tensor):
            return out
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)):
            logits = out[0]
        if not isinstance(logits, Tensor):
            raise TypeError(f"{type(model).__name__}: the model's output holds no logits")
        return logits

    def output(self, out: Any) -> Tensor:
        """The hidden states a block returned."""
        if self.block_output is not None:
            return self.block_output(out)
        if isinstance(out, Tensor):
            return out
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            return out[0]
        raise TypeError(f"adapter {self.name!r}: a block returned {type(out).__name__}")


def _accepts(model: nn.Module, keyword: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# ---------------------------------------------------------------------------- registry

_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter, *, overwrite: bool = False) -> ModelAdapter:
    """Add an adapter; later registrations are tried first, so a user adapter wins.

    Example::

        from prunekit.llm import ModelAdapter, register_adapter

        register_adapter(ModelAdapter(
            name="phi",
            matches=lambda m: getattr(getattr(m, "config", None), "model_type", None) == "phi",
        ))
    """
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(f"adapter: expected a ModelAdapter, got {type(adapter).__name__}")
    if adapter.name in _ADAPTERS and not overwrite:
        raise ValueError(f"adapter: {adapter.name!r} is already registered (pass overwrite=True)")
    _ADAPTERS.pop(adapter.name, None)
    _ADAPTERS[adapter.name] = adapter
    return adapter


def list_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model: nn.Module, adapter: str | ModelAdapter | None = None) -> ModelAdapter:
    """The adapter for ``model``: the one given (by name or object), else the first that matches.

    Raises:
        UnknownArchitectureError: no registered adapter recognises the model.
    """
    if isinstance(adapter, ModelAdapter):
        return adapter
    if isinstance(adapter, str):
        if adapter not in _ADAPTERS:
            raise ValueError(f"adapter: unknown {adapter!r}; registered: {list_adapters()}")
        return _ADAPTERS[adapter]
    if adapter is not None:
        raise TypeError(f"adapter: expected a name or a ModelAdapter, got {type(adapter).__name__}")
    for candidate in reversed(list(_ADAPTERS.values())):
        if candidate.name != "generic" and candidate.matches(model):
            return candidate
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    raise UnknownArchitectureError(
        f"model: no adapter recognises {type(model).__name__}"
        + (f" (model_type={kind!r})" if kind else "")
        + f"; registered adapters: {list_adapters()}. Pass adapter='generic' to use structural "
        "detection alone, or register one with prunekit.llm.register_adapter "
        "(see docs/llm.md)"
    )


def _model_type(*types: str) -> Callable[[nn.Module], bool]:
    def matches(model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) in types

    return matches


def _is_prunekit_gpt(model: nn.Module) -> bool:
    from prunekit.models.gpt import GPT

    return isinstance(model, GPT)


register_adapter(ModelAdapter("generic", matches=lambda m: True))
register_adapter(ModelAdapter("gpt2", matches=_model_type("gpt2")))
register_adapter(ModelAdapter("opt", matches=_model_type("opt")))
register_adapter(
    ModelAdapter(
        "llama",
        matches=_model_type("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"),
    )
)
register_adapter(
    ModelAdapter(
        "bert",
        matches=_model_type("bert", "roberta", "distilbert", "xlm-roberta", "electra"),
        causal=False,
    )
)
register_adapter(ModelAdapter("prunekit-gpt", matches=_is_prunekit_gpt))


def tree_map(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in nested tuples / lists / dicts."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(tree_map(fn, o) for o in obj)
    if isinstance(obj, list):
        return [tree_map(fn, o) for o in obj]
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
