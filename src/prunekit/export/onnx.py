"""ONNX export of pruned models (structurally shrunk or masked) through torch's exporter.

A structurally pruned model is an ordinary smaller module and a masked model is a dense module with
zeros, so both export as they are; ONNX Runtime runs the result. The first axis of every input is
a symbolic ``batch`` dimension by default, so one file serves any batch size. Needs the optional
``onnx`` extra (``pip install prunekit[onnx]``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Above this many parameter bytes the weights go to an external-data file beside the graph
# (protobuf caps a single message at 2 GiB).
_EXTERNAL_DATA_BYTES = 1 << 30


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'prunekit[onnx]'")


@contextlib.contextmanager
def _quiet_logger():
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise TypeError(
        "example_inputs: expected a tensor, a tuple/list of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}"
    )


def _batch_axes(args: tuple, kwargs: dict) -> tuple[tuple, dict, Any]:
    """Inputs to trace with and the ``dynamic_shapes`` that make axis 0 of every tensor ``batch``.

    All tensor inputs must share their first dimension. A batch of 1 is repeated to 2: the
    exporter would otherwise fix a size-1 axis as a constant.
    """
    sizes = {
        int(v.shape[0])
        for v in (*args, *kwargs.values())
        if isinstance(v, torch.Tensor) and v.dim() > 0
    }
    if len(sizes) != 1:
        found = sorted(sizes) or "no tensor with a first axis"
        raise ValueError(
            "dynamic_batch: expected every tensor input to share its first (batch) dimension, "
            f"found {found}; pass dynamic_batch=False to export fixed shapes"
        )
    batch = torch.export.Dim("batch", min=1)

    def axis(v: Any) -> Any:
        return {0: batch} if isinstance(v, torch.Tensor) and v.dim() > 0 else None

    def widen(v: Any) -> Any:
        if sizes == {1} and isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.repeat(2, *([1] * (v.dim() - 1)))
        return v

    args = tuple(widen(v) for v in args)
    kwargs = {k: widen(v) for k, v in kwargs.items()}
    shapes = {k: axis(v) for k, v in kwargs.items()} if kwargs else tuple(axis(v) for v in args)
    return args, kwargs, shapes


def to_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (in eval mode) to the ONNX file ``path`` and return its path.

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs; the
    graph is traced with them. With ``dynamic_batch`` (the default) the first axis of every tensor
    input (and of the outputs) is a symbolic ``batch`` dimension, so the file runs at any batch
    size; all tensor inputs must then share their first dimension (a batch of 1 is repeated to 2
    for tracing). ``dynamic_batch=False`` fixes every shape to the example's. ``opset`` picks
    the ONNX opset (torch's default when ``None``). The file is written atomically; models over
    1 GiB also get an external-data file beside it (ONNX caps one file at 2 GiB).
    """
    _require_onnx()
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ValueError(f"opset: expected an ONNX opset version >= 7, got {opset!r}")
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch: expected True or False, got {dynamic_batch!r}")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"path: {str(target)!r} is a directory, expected a file name")
    args, kwargs = _split_inputs(example_inputs)
    shapes = None
    if dynamic_batch:
        args, kwargs, shapes = _batch_axes(args, kwargs)
    was_training = model.training
    model.eval()
    # A key/value cache is an output torch.export cannot flatten; an exported graph has no use
    # for it anyway (transformers models read ``config.use_cache``).
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache:
        config.use_cache = False
    try:
        # The exporter narrates each phase on stdout and logs missing torchvision ops; keep quiet.
        with contextlib.redirect_stdout(io.StringIO()), _quiet_logger(), torch.no_grad():
            program = torch.onnx.export(
                model,
                args,
                kwargs=kwargs or None,
                dynamic_shapes=shapes,
                dynamo=True,
                opset_version=opset,
                verbose=False,
                optimize=True,
            )
    finally:
        model.train(was_training)
        if use_cache:
            config.use_cache = use_cache
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    external = nbytes > _EXTERNAL_DATA_BYTES
    from prunekit.core.serialization import TMP_PREFIX, TMP_SUFFIX, check_write_path, make_dirs

    make_dirs(target.parent)
    # Save into a private folder beside the target, then move into place (atomic per file).
    tmpdir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=target.parent))
    try:
        program.save(str(tmpdir / target.name), external_data=external)
        for produced in sorted(tmpdir.iterdir(), key=lambda p: p.name == target.name):
            os.replace(produced, check_write_path(target.parent / produced.name))  # graph last
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target
