"""Scores on disk: safetensors with the data set's fingerprint, reused across runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunekit.core.serialization import load_safetensors, save_safetensors
from prunekit.data_pruning.base import ScoreContext, compute_scores
from prunekit.data_pruning.data import fingerprint

__all__ = ["FingerprintMismatch", "load_scores", "save_scores", "scores_cached"]

ON_MISMATCH = ("recompute", "error")


class FingerprintMismatch(ValueError):
    """A scores file was computed on different data than the data set given."""


def save_scores(
    scores: Tensor, path: str | os.PathLike[str], *, fingerprint: str, meta: dict[str, Any]
) -> None:
    """Write ``scores`` (one per example) and their provenance atomically."""
    save_safetensors(
        {"scores": scores.detach().to("cpu", torch.float32).reshape(-1)},
        path,
        {**meta, "fingerprint": fingerprint, "num_examples": int(scores.numel())},
    )


def load_scores(
    path: str | os.PathLike[str], *, fingerprint: str | None = None
) -> tuple[Tensor, dict[str, Any]]:
    """Read a scores file; with ``fingerprint``, raise :class:`FingerprintMismatch` unless the
    file was computed on data with that fingerprint."""
    tensors, meta = load_safetensors(path)
    scores = tensors.get("scores")
    if scores is None or scores.dim() != 1 or scores.numel() != meta.get("num_examples"):
        raise ValueError(f"path: {str(path)!r} is not a data-scores file (no 1-D 'scores')")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise FingerprintMismatch(
            f"path: {str(path)!r} holds scores of a different data set (fingerprint "
            f"{str(meta.get('fingerprint'))[:12]}..., this data set {fingerprint[:12]}...)"
        )
    return scores, meta


def scores_cached(
    name: str,
    ctx: ScoreContext,
    path: str | os.PathLike[str],
    *,
    options: dict[str, Any] | None = None,
    on_mismatch: str = "recompute",
    data_fingerprint: str | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Scores of ``ctx.data`` from ``path`` when it holds them, else computed and saved there.

    A file for other data (fingerprint mismatch) is recomputed and replaced
    (``on_mismatch="recompute"``) or raises :class:`FingerprintMismatch` (``"error"``); a file
    with another score or other options is always recomputed. Returns ``(scores, meta)``;
    ``meta["reused"]`` says whether the file was reused, ``meta["seconds"]`` what computing took.
    """
    import time

    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch: expected one of {ON_MISMATCH}, got {on_mismatch!r}")
    options = dict(options or {})
    fp = data_fingerprint or fingerprint(ctx.data)
    wanted = {"score": name, "options": _jsonable(options), "seed": ctx.seed}
    path = Path(path)
    if path.is_file():
        try:
            scores, meta = load_scores(path, fingerprint=fp)
        except FingerprintMismatch:
            if on_mismatch == "error":
                raise
        else:
            if all(meta.get(k) == v for k, v in wanted.items()):
                return scores, {**meta, "reused": True}
    start = time.perf_counter()
    scores = compute_scores(name, ctx, **options)
    meta = {**wanted, "seconds": time.perf_counter() - start}
    save_scores(scores, path, fingerprint=fp, meta=meta)
    return scores, {**meta, "fingerprint": fp, "num_examples": int(scores.numel()),
                    "reused": False}  # fmt: skip


def _jsonable(options: dict[str, Any]) -> Any:
    # Options that are objects (an encoder module) are recorded by type name only.
    return json.loads(json.dumps(options, sort_keys=True, default=lambda o: type(o).__name__))
