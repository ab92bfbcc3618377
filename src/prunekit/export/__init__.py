"""Export a pruned model for inference: compressed checkpoints (prunekit's own and
compressed-tensors), ONNX and sparse kernels."""

from prunekit.export.compressed import (
    FORMAT,
    compress_state_dict,
    load_compressed,
    load_compressed_into,
    save_compressed,
)
from prunekit.export.compressed_tensors import load_compressed_tensors, save_compressed_tensors
from prunekit.export.onnx import to_onnx
from prunekit.export.sparse import (
    LayerDecision,
    SparseConv1x1,
    SparseLinear,
    SparseReport,
    csr_bytes_ceiling,
    is_2_4_sparse,
    to_sparse,
)

__all__ = [
    "FORMAT",
    "LayerDecision",
    "SparseConv1x1",
    "SparseLinear",
    "SparseReport",
    "csr_bytes_ceiling",
    "is_2_4_sparse",
    "compress_state_dict",
    "load_compressed",
    "load_compressed_into",
    "load_compressed_tensors",
    "save_compressed",
    "save_compressed_tensors",
    "to_onnx",
    "to_sparse",
]
