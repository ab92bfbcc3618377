"""SparseGPT (Frantar & Alistarh, 2023): prune a linear layer and update its remaining weights.

With H = X^T X over the calibration tokens (dampened by ``percdamp`` x mean(diag H)), and U the
upper Cholesky factor of H^-1, columns are visited in blocks of ``blocksize``: at each block start
the mask is chosen by w^2 / U_cc^2 (or per row and group of M for N:M); each column's pruning error
err = (w - q) / U_ii is spread over the block's later columns (W[:, i:] -= err U[i, i:]), and after
the block the accumulated error is propagated to all later columns in one matrix product (the lazy
batch update). Cost: O(cols^3 + rows * cols^2).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from prunekit.core.allocation import largest_remainder
from prunekit.llm.rules import LayerInputs, LayerUpdate, register_llm_rule

__all__ = ["CholeskyError", "inverse_cholesky", "sparsegpt_prune"]


class CholeskyError(RuntimeError):
    """The dampened Hessian stayed numerically non-positive-definite after every retry."""


def inverse_cholesky(
    hessian: Tensor, percdamp: float = 0.01, name: str = "layer", retries: int = 6
) -> tuple[Tensor, float]:
    """(U, dampening used): U upper triangular with (H + damp * mean(diag H) * I)^-1 = U^T U.

    On a failed factorisation the dampening is multiplied by 10 and a warning names the layer;
    after ``retries`` failures :class:`CholeskyError` is raised (never a silent fallback).
    """
    n = hessian.shape[0]
    mean_diag = float(torch.diagonal(hessian).mean())
    if not math.isfinite(mean_diag):
        raise CholeskyError(f"sparsegpt: the Hessian of {name} holds NaN or inf")
    mean_diag = mean_diag or 1.0
    damp = percdamp
    for _attempt in range(retries + 1):
        # With J the order-reversing permutation, J H J = L L^T gives H^-1 = U^T U for the upper
        # triangular U = J L^-1 J: one factorisation and one triangular solve, no explicit inverse.
        flipped = hessian.flip(0, 1)  # a copy: the caller's Hessian is left alone
        flipped.diagonal().add_(damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(flipped)
        del flipped
        if int(info) == 0:
            identity = torch.eye(n, dtype=hessian.dtype, device=hessian.device)
            inverse = torch.linalg.solve_triangular(lower, identity, upper=False)
            del lower, identity
            upper = inverse.flip(0, 1)
            del inverse
            if bool(torch.isfinite(upper).all()):
                return upper, damp
        warnings.warn(
            f"sparsegpt: Cholesky factorisation failed for {name} with dampening {damp:g}; "
            f"retrying with {damp * 10:g}",
            RuntimeWarning,
            stacklevel=3,
        )
        damp *= 10
    raise CholeskyError(
        f"sparsegpt: the Hessian of {name} is not positive definite even with dampening "
        f"{damp / 10:g}; check the calibration data (NaN, too few tokens)"
    )


def _block_quotas(rows: int, cols: int, blocksize: int, sparsity: float) -> list[int]:
    # Exactly round(s * rows * cols) pruned in the layer, spread over the column blocks in
    # proportion to their width.
    widths = [min(blocksize, cols - i) for i in range(0, cols, blocksize)]
    total = min(round(sparsity * rows * cols), rows * cols - 1)  # never the whole layer
    keys = [str(i) for i in range(len(widths))]
    quotas = largest_remainder(
        {k: total * w / cols for k, w in zip(keys, widths)},
        total,
        {k: rows * w for k, w in zip(keys, widths)},
    )
    return [quotas[k] for k in keys]


@torch.no_grad()
def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None = None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "layer",
) -> tuple[Tensor, Tensor, dict]:
    """Prune ``weight`` (out, in) with the Hessian ``hessian`` (in, in) of its inputs.

    Returns:
        (new float32 weight with pruned entries exactly 0, keep-mask, info) where info holds the
        dampening used and the number of dead input columns.
    """
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(
            f"sparsegpt: {name}: weight {tuple(weight.shape)} and Hessian "
            f"{tuple(hessian.shape)} do not fit"
        )
    if blocksize < 1:
        raise ValueError(f"blocksize: expected a positive int, got {blocksize!r}")
    if pattern is not None and blocksize % pattern[1]:
        raise ValueError(f"blocksize: {blocksize} is not a multiple of the group size {pattern[1]}")
    w = weight.detach().float().clone()
    h = hessian.detach().float()
    rows, cols = w.shape
    if pattern is not None and cols % pattern[1]:
        raise ValueError(
            f"pattern: {pattern[0]}:{pattern[1]} needs the input size of {name} to be a multiple "
            f"of {pattern[1]}, got {cols}"
        )
    dead = torch.diagonal(h) == 0
    if bool(dead.any()):
        h = h.clone()  # never modify the caller's Hessian
        h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv, damp = inverse_cholesky(h, percdamp, name)
    del h
    prune = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    quotas = _block_quotas(rows, cols, blocksize, sparsity) if pattern is None else None

    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        # Work on the block transposed so that each column is a contiguous row.
        block = w[:, i1:i2].t().contiguous()  # (count, rows)
        errors = torch.empty_like(block)
        hblock = hinv[i1:i2, i1:i2]
        diag = torch.diagonal(hblock)
        pblock = torch.zeros(count, rows, dtype=torch.bool, device=w.device)
        if quotas is not None and quotas[b]:
            score = block.square() / diag.square().unsqueeze(1)
            order = score.reshape(-1).sort(stable=True).indices[: quotas[b]]
            pblock.view(-1)[order] = True
        for i in range(count):
            if pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                group = block[i : i + m].square() / diag[i : i + m].square().unsqueeze(1)
                lowest = group.t().sort(dim=1, stable=True).indices[:, : m - n]  # (rows, m-n)
                sel = torch.zeros(rows, m, dtype=torch.bool, device=w.device)
                sel.scatter_(1, lowest, True)
                pblock[i : i + m] = sel.t()
            col = block[i]
            quantised = col.masked_fill(pblock[i], 0.0)
            err = (col - quantised) / diag[i]
            # W[:, i:] -= err * U[i, i:], on the transposed block.
            block[i:].addr_(hblock[i, i:], err, alpha=-1.0)  # in place, no temporary
            block[i] = quantised
            errors[i] = err
        w[:, i1:i2] = block.t()
        prune[:, i1:i2] = pblock.t()
        if i2 < cols:
            w[:, i2:].sub_(errors.t() @ hinv[i1:i2, i2:])

    w[prune] = 0.0
    return w, ~prune, {"damp": damp, "dead_columns": int(dead.sum())}


@register_llm_rule(
    "sparsegpt",
    needs="hessian",
    doc="SparseGPT (Frantar & Alistarh 2023): prune column by column and update the remaining "
    "weights from the layer's input Hessian.",
)
def _sparsegpt_rule(layer: LayerInputs) -> LayerUpdate:
    assert layer.hessian is not None  # the engine provides it for needs="hessian"
    # SparseGPT is invariant to the scale of H: the raw sum X^T X saves a copy.
    new, mask, info = sparsegpt_prune(
        layer.weight,
        layer.hessian,
        layer.sparsity,
        layer.pattern,
        blocksize=getattr(layer.options, "blocksize", 128),
        percdamp=getattr(layer.options, "percdamp", 0.01),
        name=layer.name,
    )
    return LayerUpdate(mask, new, info)
