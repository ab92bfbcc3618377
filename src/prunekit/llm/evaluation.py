"""Evaluation of pruned language models: perplexity and dense-vs-pruned output agreement."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.llm.adapters import ModelAdapter, get_adapter, model_device
from prunekit.llm.calibration import (
    CalibrationSource,
    check_token_ids,
    default_seqlen,
    read_tokens,
)

__all__ = ["output_agreement", "perplexity"]


def _windows(tokens: Tensor, seqlen: int, max_windows: int | None) -> Tensor:
    flat = tokens.reshape(-1)
    count = flat.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise ValueError(
            f"data: {flat.numel()} tokens make no full window of seqlen={seqlen}; lower seqlen"
        )
    return flat[: count * seqlen].reshape(count, seqlen)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    data: CalibrationSource,
    *,
    tokenizer: Any = None,
    seqlen: int | None = None,
    batch_size: int = 1,
    max_windows: int | None = None,
    adapter: str | ModelAdapter | None = None,
) -> float:
    """exp(mean next-token negative log-likelihood) over non-overlapping windows of ``seqlen``.

    The text (or token stream) is cut into consecutive windows of ``seqlen`` tokens (the
    remainder is dropped), as the SparseGPT and Wanda papers evaluate WikiText-2; every position
    after the first of each window is predicted.

    Raises:
        ValueError: the model is not a causal language model, or the data is too short.
    """
    chosen = get_adapter(model, adapter)
    if not chosen.causal:
        raise ValueError(f"model: perplexity needs a causal language model ({chosen.name})")
    seqlen = seqlen or default_seqlen(chosen.context_length(model))
    tokens = read_tokens(data, tokenizer)
    check_token_ids(tokens, model, "data")
    windows = _windows(tokens, seqlen, max_windows)
    device = model_device(model)
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = chosen.logits(model, batch)[:, :-1].float()
            target = batch[:, 1:]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            )
            nll += float(loss)
            count += target.numel()
    finally:
        model.train(was_training)
    return math.exp(nll / count)


@torch.no_grad()
def output_agreement(
    dense: nn.Module,
    pruned: nn.Module,
    tokens: Tensor,
    *,
    batch_size: int = 1,
    adapter: str | ModelAdapter | None = None,
) -> dict[str, float]:
    """How closely ``pruned`` reproduces ``dense`` on ``tokens`` (batch, seqlen).

    Returns:
        ``relative_error`` ||z_d - z_p||^2 / ||z_d||^2 of the logits, ``top1_agreement`` (share of
        positions whose arg-max token agrees) and ``kl`` (mean KL(p_dense || p_pruned) per token).
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens: expected (batch, seqlen) ids, got shape {tuple(tokens.shape)}")
    chosen = get_adapter(dense, adapter)
    num = den = kl = 0.0
    agree = positions = 0
    for batch in tokens.split(batch_size):
        a = chosen.logits(dense, batch.to(model_device(dense))).float()
        b = chosen.logits(pruned, batch.to(model_device(pruned))).float().to(a.device)
        num += float((a - b).square().sum())
        den += float(a.square().sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0] * a.shape[1]
        logp, logq = a.log_softmax(-1), b.log_softmax(-1)
        kl += float((logp.exp() * (logp - logq)).sum())
    return {
        "relative_error": num / den if den else 0.0,
        "top1_agreement": agree / positions,
        "kl": kl / positions,
    }
