"""Export a pruned model for inference: compressed checkpoints and ONNX."""

from prunekit.export.compressed import (
    FORMAT,
    compress_state_dict,
    load_compressed,
    load_compressed_into,
    save_compressed,
)
from prunekit.export.onnx import to_onnx

__all__ = [
    "FORMAT",
    "compress_state_dict",
    "load_compressed",
    "load_compressed_into",
    "save_compressed",
    "to_onnx",
]
