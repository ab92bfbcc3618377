"""``prunekit export RUN_DIR --format F --out DIR``: a finished run's final model as a file to ship."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLE = """examples:
  prunekit export results/runs/one_shot_mlp-0123456789 --format compressed --out shipped/
  prunekit export results/runs/my_cnn-0123456789 --format onnx --out shipped/ --allow-import mycnn

Formats:
  safetensors   the dense state_dict (pruned entries are zeros) + model_spec.json
  compressed    non-zeros + bitmasks (prunekit.load_compressed reads it back) + model_spec.json
  hf            save_pretrained folder (runs whose model came from a Hugging Face folder)
  onnx          model.onnx, traced on the input example the run recorded; any batch size
                runs it (--static-batch fixes the example's)
  torchscript   model.pt (torch.jit.trace on that example)
A run of a model built by a module:function factory is rebuilt only with --allow-import PKG."""


def _copy_spec(run: Any, out: Path) -> list[Path]:
    from prunekit.core.serialization import write_json

    write_json(run.spec, out / "model_spec.json")
    return [out / "model_spec.json"]


def _state(run: Any) -> dict[str, Any]:
    # Clones: tied weights share storage, which safetensors refuses to write twice.
    return {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}


def export_safetensors(run: Any, out: Path) -> list[Path]:
    """``model.safetensors``: the final state_dict, readable by ``safetensors.torch.load_file``."""
    from prunekit.core.serialization import save_safetensors

    save_safetensors(_state(run), out / "model.safetensors", {"kind": "state_dict"})
    return [out / "model.safetensors", *_copy_spec(run, out)]


def export_compressed(run: Any, out: Path) -> list[Path]:
    """``model.compressed.safetensors``: non-zero values plus a bitmask per sparse tensor."""
    from prunekit.export import save_compressed

    save_compressed(_state(run), out / "model.compressed.safetensors")
    return [out / "model.compressed.safetensors", *_copy_spec(run, out)]


def export_hf(run: Any, out: Path) -> list[Path]:
    """A ``save_pretrained`` folder of the transformers model inside the run."""
    from prunekit.experiments.sources import HFClassifier

    if not isinstance(run.model, HFClassifier):
        raise ValueError(
            f"format: 'hf' needs a run whose model came from a Hugging Face folder "
            f"(model.hf); this run's model is {run.spec.get('kind')!r}: use safetensors, "
            "compressed, onnx or torchscript"
        )
    # Written into a fresh folder of our own, then moved in file by file (atomic replace).
    from prunekit.core.serialization import TMP_PREFIX, TMP_SUFFIX, check_write_path

    with tempfile.TemporaryDirectory(dir=out, prefix=TMP_PREFIX, suffix=TMP_SUFFIX) as tmp:
        run.model.model.save_pretrained(tmp, safe_serialization=True)
        written = []
        for item in sorted(Path(tmp).iterdir()):
            if item.is_file():
                os.replace(item, check_write_path(out / item.name))
                written.append(out / item.name)
    return written


def export_onnx(run: Any, out: Path, *, dynamic_batch: bool = True) -> list[Path]:
    """``model.onnx`` through :func:`prunekit.export.to_onnx` (a symbolic batch axis unless
    ``dynamic_batch=False``)."""
    try:
        from prunekit.export import to_onnx
    except ImportError:
        raise ValueError(
            "format: 'onnx' needs prunekit.export.to_onnx, which this installation lacks"
        ) from None
    path = to_onnx(
        run.model, (run.example_input(),), out / "model.onnx", dynamic_batch=dynamic_batch
    )
    return [Path(path)]


def export_torchscript(run: Any, out: Path) -> list[Path]:
    """``model.pt``: ``torch.jit.trace`` of the final model (load with ``torch.jit.load``)."""
    import warnings

    import torch

    from prunekit.core.serialization import atomic_path

    with warnings.catch_warnings():
        # tracer notes about Python control flow, and TorchScript's deprecation notice
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(run.model, (run.example_input(),), check_trace=False)
        with atomic_path(out / "model.pt") as tmp:
            torch.jit.save(traced, str(tmp))
    return [out / "model.pt"]


FORMATS: dict[str, Callable[[Any, Path], list[Path]]] = {
    "safetensors": export_safetensors,
    "compressed": export_compressed,
    "hf": export_hf,
    "onnx": export_onnx,
    "torchscript": export_torchscript,
}


def export_run(
    run_dir: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    allow_import: list[str] | None = None,
    dynamic_batch: bool = True,
) -> list[Path]:
    """Write the final model of the run in ``run_dir`` to ``out`` in format ``fmt``.

    ``dynamic_batch`` (ONNX only) gives the exported graph a symbolic batch axis."""
    from prunekit.experiments.reload import load_run

    if fmt not in FORMATS:
        raise ValueError(f"format: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    run = load_run(run_dir, allow_import=allow_import)
    target = Path(out)
    if target.is_symlink():
        raise ValueError(f"out: {str(target)!r} is a symbolic link; give a real folder")
    if target.exists() and not target.is_dir():
        raise ValueError(f"out: {str(target)!r} exists and is not a folder")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "onnx":
            return export_onnx(run, target, dynamic_batch=dynamic_batch)
        return FORMATS[fmt](run, target)
    except BaseException:
        if created:  # leave nothing half-written behind in a folder we made
            with contextlib.suppress(OSError):
                shutil.rmtree(target)
        raise


def run(args: argparse.Namespace) -> int:
    paths = export_run(
        args.run_dir,
        args.format,
        args.out,
        allow_import=args.allow_import,
        dynamic_batch=not args.static_batch,
    )
    for path in paths:
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a finished run's final model (safetensors, compressed, hf, onnx, ...)",
        description="Export the final sparse model of a finished run.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a finished run directory (<output>/runs/<name>-<hash>)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="output format")
    parser.add_argument("--out", required=True, help="folder to write into (created if needed)")
    parser.add_argument(
        "--allow-import",
        action="append",
        metavar="PKG",
        help="allow importing the model factory from package PKG (runs of a model.factory)",
    )
    parser.add_argument(
        "--static-batch",
        action="store_true",
        help="onnx: fix the batch size to the recorded example's instead of a symbolic axis",
    )
    parser.set_defaults(func=run)
