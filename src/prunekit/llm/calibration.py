"""Calibration data: n random windows of seqlen tokens from a local text, dataset or token tensor.

Nothing is downloaded. Sources:

* a path to a text file (tokenised with the model's tokenizer, or bytes for byte-level models),
* a path to a Hugging Face dataset saved with ``save_to_disk`` (needs the ``datasets`` package),
* token ids: a 1-D stream (windows are sampled from it) or a 2-D ``(n, seqlen)`` tensor (used as is).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CalibrationSource",
    "byte_tokenizer",
    "cap_seqlen",
    "default_seqlen",
    "load_calibration",
    "read_tokens",
]

CalibrationSource = str | os.PathLike | Tensor | Sequence[int]
Tokenizer = Callable[[str], Sequence[int]] | Any


def byte_tokenizer(text: str) -> list[int]:
    """UTF-8 bytes as token ids (what prunekit's byte-level GPT uses)."""
    return list(text.encode("utf-8"))


def _encode(tokenizer: Tokenizer, text: str) -> Tensor:
    if hasattr(tokenizer, "encode"):  # transformers or tokenizers object
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(text)
    elif callable(tokenizer):
        ids = tokenizer(text)
    else:
        raise TypeError(
            f"tokenizer: expected a callable or an object with .encode, got {tokenizer!r}"
        )
    if hasattr(ids, "ids"):  # a tokenizers.Encoding
        ids = ids.ids
    return torch.as_tensor(list(ids), dtype=torch.long)


def _read_dataset(path: Path, text_column: str) -> str:
    try:
        import datasets
    except ImportError as err:
        raise ValueError(
            f"calibration: {str(path)!r} is a saved Hugging Face dataset; reading it needs the "
            "'datasets' package (pip install datasets), or pass a text file or token tensor"
        ) from err
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    if text_column not in data.column_names:
        raise ValueError(
            f"calibration: dataset {str(path)!r} has no column {text_column!r} "
            f"(columns: {data.column_names}); pass text_column="
        )
    return "\n\n".join(t for t in data[text_column] if t)


def read_tokens(
    source: CalibrationSource, tokenizer: Tokenizer | None = None, text_column: str = "text"
) -> Tensor:
    """Token ids from ``source``: a 1-D stream, or a 2-D ``(n, seqlen)`` tensor given as is.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a text source without a tokenizer, or an unusable tensor.
    """
    if isinstance(source, Tensor):
        if source.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"calibration: expected integer token ids, got {source.dtype}")
        if source.dim() not in (1, 2) or source.numel() == 0:
            raise ValueError(
                f"calibration: expected a non-empty 1-D or 2-D token tensor, got shape "
                f"{tuple(source.shape)}"
            )
        return source.long()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"calibration: no such file or directory {str(path)!r}")
        if path.is_dir():
            if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
                raise ValueError(
                    f"calibration: directory {str(path)!r} is not a dataset saved with "
                    "save_to_disk (no dataset_info.json / dataset_dict.json)"
                )
            text = _read_dataset(path, text_column)
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
        if tokenizer is None:
            raise ValueError(
                "calibration: a text source needs a tokenizer (pass tokenizer=, or token ids)"
            )
        return _encode(tokenizer, text)
    if isinstance(source, Sequence) and source and all(isinstance(t, int) for t in source):
        return torch.as_tensor(list(source), dtype=torch.long)
    raise TypeError(
        "calibration: expected a path to a text file or saved dataset, or token ids "
        f"(tensor or list of int), got {type(source).__name__}"
    )


def vocab_size_of(model: Any) -> int | None:
    """Rows of the model's input embedding (its vocabulary), or None when it has none."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is None:
        import torch.nn as nn

        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    rows = getattr(embedding, "num_embeddings", None)
    return int(rows) if isinstance(rows, int) else None


def check_token_ids(tokens: Tensor, model: Any, what: str = "calibration") -> None:
    """Refuse token ids outside ``[0, vocab)`` before they reach the embedding (which would
    fail deep inside the model, or read out of bounds on some devices).

    Raises:
        ValueError: an id is negative or not below the model's vocabulary size (names ``what``).
    """
    vocab = vocab_size_of(model)
    if vocab is None or tokens.numel() == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(
            f"{what}: token id {bad} is outside the model's vocabulary [0, {vocab}); "
            "was the data tokenized for another model?"
        )


def default_seqlen(context: int | None) -> int:
    """min(2048, the model's context length)."""
    return min(2048, context) if context else 2048


def cap_seqlen(
    seqlen: int, nsamples: int, hidden_size: int, bytes_per_value: int, budget_bytes: int | None
) -> int:
    """Largest seqlen <= ``seqlen`` whose two activation buffers (inputs + outputs of a block,
    ``2 * nsamples * seqlen * hidden * bytes``) fit in ``budget_bytes``; warns when it shrinks."""
    if budget_bytes is None:
        return seqlen
    per_token = 2 * nsamples * hidden_size * bytes_per_value
    fitting = budget_bytes // per_token
    if fitting >= seqlen:
        return seqlen
    if fitting < 1:
        raise ValueError(
            f"calibration: {nsamples} samples need {per_token} bytes of activations per token "
            f"position, more than the memory budget of {budget_bytes} bytes; lower nsamples, "
            "offload activations to disk, or raise max_memory"
        )
    warnings.warn(
        f"calibration: seqlen capped from {seqlen} to {int(fitting)} so that the calibration "
        f"activations ({nsamples} x seqlen x {hidden_size}, twice) fit in {budget_bytes / 2**30:.2f}"
        " GiB",
        stacklevel=3,
    )
    return int(fitting)


def load_calibration(
    source: CalibrationSource,
    *,
    tokenizer: Tokenizer | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    text_column: str = "text",
) -> Tensor:
    """``(nsamples, seqlen)`` token ids: random windows (seeded) of a token stream.

    A 2-D tensor is returned as is (truncated to ``seqlen`` columns and ``nsamples`` rows).

    Raises:
        ValueError: the source holds fewer than ``seqlen + 1`` tokens, or bad sizes.
    """
    if not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples: expected a positive int, got {nsamples!r}")
    if not isinstance(seqlen, int) or seqlen < 1:
        raise ValueError(f"seqlen: expected a positive int, got {seqlen!r}")
    tokens = read_tokens(source, tokenizer, text_column)
    if tokens.dim() == 2:
        return tokens[:nsamples, :seqlen].contiguous()
    if tokens.numel() <= seqlen:
        raise ValueError(
            f"calibration: the source holds {tokens.numel()} tokens, fewer than seqlen + 1 = "
            f"{seqlen + 1}; lower seqlen or give more text"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(
        0, tokens.numel() - seqlen, (nsamples,), generator=generator, device="cpu"
    )
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])
