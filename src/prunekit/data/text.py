"""A text corpus from a local file, tokenised (bytes by default) into language-model batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from prunekit.data.base import TensorData


def tokenize_file(path: str | Path, tokenizer: str | None = None) -> tuple[Tensor, int]:
    """Token ids of a local text file and the vocabulary size.

    ``tokenizer=None`` reads raw bytes (vocabulary 256). Otherwise it names a Hugging Face tokenizer
    (a local folder or a name already in the local cache; nothing is downloaded).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"path: no text file at {str(file)!r} (expected a local UTF-8 or byte file)"
        )
    raw = file.read_bytes()
    if not raw:
        raise ValueError(f"path: {str(file)!r} is empty")
    if tokenizer is None:
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long(), 256
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # optional dependency
        raise ImportError(
            "tokenizer: needs the 'transformers' package (pip install prunekit[llm])"
        ) from err
    try:
        tok = AutoTokenizer.from_pretrained(
            tokenizer, local_files_only=True, trust_remote_code=False
        )
    except Exception as err:
        raise ValueError(
            f"tokenizer: cannot load {tokenizer!r} from local files (give a local folder or a "
            f"cached name; nothing is downloaded): {err}"
        ) from err
    ids = tok(raw.decode("utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), int(len(tok))


def lm_chunks(tokens: Tensor, block_size: int) -> TensorData:
    """Cut a token stream into non-overlapping inputs of ``block_size`` and next-token targets."""
    if block_size < 1:
        raise ValueError(f"block_size: expected a positive integer, got {block_size}")
    n = (tokens.numel() - 1) // block_size
    if n < 1:
        raise ValueError(
            f"block_size: the text has {tokens.numel()} tokens, fewer than block_size + 1 = {block_size + 1}"
        )
    x = tokens[: n * block_size].reshape(n, block_size)
    y = tokens[1 : n * block_size + 1].reshape(n, block_size)
    return TensorData(x.contiguous(), y.contiguous())


def split_tokens(
    tokens: Tensor, val_fraction: float, test_fraction: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous train / validation / test parts of a token stream (text is not shuffled)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction, test_fraction: expected non-negative fractions summing to < 1, got "
            f"{val_fraction}, {test_fraction}"
        )
    n = tokens.numel()
    n_test = int(n * test_fraction)
    n_val = int(n * val_fraction)
    n_train = n - n_val - n_test
    return tokens[:n_train], tokens[n_train : n_train + n_val], tokens[n_train + n_val :]
