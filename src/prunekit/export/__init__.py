"""Export a pruned model: compressed checkpoints (and, in submodules, other inference formats)."""

from prunekit.export.compressed import (
    FORMAT,
    compress_state_dict,
    load_compressed,
    load_compressed_into,
    save_compressed,
)

__all__ = [
    "FORMAT",
    "compress_state_dict",
    "load_compressed",
    "load_compressed_into",
    "save_compressed",
]
