"""Post-training pruning of transformers and LLMs, one block at a time.

>>> from prunekit.llm import prune_llm
>>> masks, report = prune_llm(model, method="sparsegpt", sparsity=0.5,
...                           calibration="calib.txt", tokenizer=tokenizer)  # doctest: +SKIP

``transformers`` is optional: prunekit's own GPT and any ``nn.Module`` with a registered adapter
work without it.
"""

from prunekit.llm.adapters import (
    ModelAdapter,
    UnknownArchitectureError,
    find_blocks,
    get_adapter,
    list_adapters,
    register_adapter,
)
from prunekit.llm.calibration import byte_tokenizer, load_calibration
from prunekit.llm.engine import METHODS, LLMPruneConfig, prune_llm
from prunekit.llm.lora import AdapterLinear, add_adapters, merge_adapters
from prunekit.llm.methods import magnitude_mask, owl_sparsities, wanda_mask
from prunekit.llm.perp import (
    PerpConfig,
    ReconstructConfig,
    perp_retrain,
    reconstruct,
    select_trainable,
)
from prunekit.llm.rules import LayerInputs, LayerUpdate, LLMRule, get_rule, register_llm_rule
from prunekit.llm.sparsegpt import CholeskyError, sparsegpt_prune

__all__ = [
    "AdapterLinear",
    "add_adapters",
    "merge_adapters",
    "perp_retrain",
    "PerpConfig",
    "ReconstructConfig",
    "reconstruct",
    "select_trainable",
    "METHODS",
    "CholeskyError",
    "LLMPruneConfig",
    "LLMRule",
    "LayerInputs",
    "LayerUpdate",
    "get_rule",
    "register_llm_rule",
    "ModelAdapter",
    "UnknownArchitectureError",
    "byte_tokenizer",
    "find_blocks",
    "get_adapter",
    "list_adapters",
    "load_calibration",
    "magnitude_mask",
    "owl_sparsities",
    "prune_llm",
    "register_adapter",
    "sparsegpt_prune",
    "wanda_mask",
]
