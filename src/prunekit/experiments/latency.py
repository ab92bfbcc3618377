"""Measured latency of finished runs: the dense model and the final sparse model, timed alike.

The final model is timed the way it would be deployed: :func:`prunekit.export.to_sparse` swaps in
sparse kernels only for layers where a micro-benchmark on this machine shows a gain (a masked model
run with dense kernels takes as long as the dense one). The dense model is the run's trained dense
checkpoint when it is on disk, else the same architecture (dense latency does not depend on the
weight values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LatencyOptions", "measure_run_latency"]


@dataclass(frozen=True)
class LatencyOptions:
    """How runs are timed: rows per forward pass, device, torch threads, repeats after warm-up."""

    batch_size: int = 1
    device: str = "cpu"
    threads: int | None = None
    repeats: int = 20
    warmup: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {self.threads!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats: expected a positive integer, got {self.repeats!r}")

    def describe(self) -> str:
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        return (
            f"median of {self.repeats} forward passes after {self.warmup} warm-up, "
            f"device {self.device}, {threads} thread(s), batch {self.batch_size}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _example(data: Any, batch_size: int) -> torch.Tensor:
    x = data.test.x
    reps = -(-batch_size // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size] if reps > 1 else x[:batch_size]


def measure_run_latency(
    result: dict[str, Any], options: LatencyOptions, _cache: dict | None = None
) -> dict[str, Any]:
    """Time the dense and the final model of one finished run (``result.json`` contents).

    Returns ``{"dense_ms", "final_ms", "measured_speedup", "sparse_layers", **options}``.
    """
    from prunekit.core.masks import MaskSet
    from prunekit.core.metrics import measure_latency
    from prunekit.experiments.config import load_config
    from prunekit.experiments.runner import build_data, build_model, read_state_dict
    from prunekit.export import load_compressed, to_sparse

    root = Path(result["run_dir"])
    final_dir = root / "final"
    for needed in (root / "config.yaml", final_dir / "model.compressed.safetensors"):
        if not needed.is_file():
            raise FileNotFoundError(f"directory: run {str(root)!r} has no {needed.name}")
    cfg = load_config(root / "config.yaml")
    cache = _cache if _cache is not None else {}
    key = repr(cfg.data)
    if key not in cache:
        cache[key] = build_data(cfg)
    data = cache[key]
    before = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        device = torch.device(options.device)
        x = _example(data, options.batch_size).to(device)
        dense = build_model(cfg, data)
        dense_file = Path(result.get("dense_dir") or "") / "model.safetensors"
        if result.get("dense_dir") and dense_file.is_file():
            dense.load_state_dict(read_state_dict(dense_file))
        final = build_model(cfg, data)
        final.load_state_dict(load_compressed(final_dir / "model.compressed.safetensors"))
        masks_file = final_dir / "masks.safetensors"
        masks = MaskSet.load(masks_file, device=device) if masks_file.is_file() else None
        dense, final = dense.to(device).eval(), final.to(device).eval()
        final, report = to_sparse(
            final, masks, device, options.batch_size, example_inputs=x, inplace=True
        )
        dense_s = measure_latency(dense, x, repeats=options.repeats, warmup=options.warmup)
        final_s = measure_latency(final, x, repeats=options.repeats, warmup=options.warmup)
    finally:
        torch.set_num_threads(before)
    return {
        "dense_ms": dense_s * 1e3,
        "final_ms": final_s * 1e3,
        "measured_speedup": dense_s / final_s,
        "sparse_layers": report.converted,
        **options.to_dict(),
    }
