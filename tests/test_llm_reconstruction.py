"""One layer with outlier input features: SparseGPT < Wanda < magnitude in output error; Wanda and
SparseGPT agree with straightforward implementations of the published algorithms."""

from __future__ import annotations

import warnings

import pytest
import torch

from prunekit.llm.methods import magnitude_mask, outlier_ratio, owl_sparsities, wanda_mask
from prunekit.llm.sparsegpt import CholeskyError, inverse_cholesky, sparsegpt_prune


def _layer(seed: int = 0, rows: int = 48, cols: int = 128, tokens: int = 1024):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g)
    x[:, torch.randperm(cols, generator=g)[:6]] *= 25.0  # a few outlier features, as in LLMs
    return w, x


def _rel_error(w: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - w2) @ x.t()).square().sum() / (w @ x.t()).square().sum())


def _reference_sparsegpt_nm(w, h, n, m, percdamp=0.01):
    """The published column-by-column algorithm, unblocked, with an explicit inverse."""
    w = w.clone().double()
    h = h.clone().double()
    cols = w.shape[1]
    h += percdamp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    prune = torch.zeros(w.shape, dtype=torch.bool)
    for i in range(cols):
        if i % m == 0:
            score = w[:, i : i + m] ** 2 / torch.diagonal(hinv)[i : i + m] ** 2
            low = score.argsort(dim=1, stable=True)[:, : m - n]
            prune[:, i : i + m].scatter_(1, low, True)
        q = w[:, i].clone()
        q[prune[:, i]] = 0
        err = (w[:, i] - q) / hinv[i, i]
        w[:, i:] -= err.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
        w[:, i] = q
    return w.float()


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_error_ordering_on_outlier_inputs(pattern):
    w, x = _layer()
    h = x.t() @ x / x.shape[0]
    col_sq = x.double().square().sum(0)
    mag = w * magnitude_mask(w, 0.5, pattern)
    wan = w * wanda_mask(w, col_sq, 0.5, pattern)
    sgpt, keep, _ = sparsegpt_prune(w, h, 0.5, pattern)
    e_mag, e_wan, e_sgpt = (_rel_error(w, v, x) for v in (mag, wan, sgpt))
    assert e_sgpt < e_wan < e_mag
    assert torch.all(sgpt[~keep] == 0)
    assert int((~keep).sum()) == w.numel() // 2


def _published_wanda_mask(metric: torch.Tensor, sparsity: float, pattern) -> torch.Tensor:
    """The published Wanda selection: per row, a stable sort pruning int(cols * s) entries."""
    pruned = torch.zeros_like(metric, dtype=torch.bool)
    if pattern is None:
        order = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
        return ~pruned.scatter_(1, order, True)
    n, m = pattern
    for i in range(0, metric.shape[1], m):
        low = torch.sort(metric[:, i : i + m], dim=-1, stable=True)[1][:, : m - n]
        pruned[:, i : i + m].scatter_(1, low, True)
    return ~pruned


@pytest.mark.parametrize(("sparsity", "pattern"), [(0.5, None), (0.7, None), (0.5, (2, 4))])
def test_wanda_mask_is_the_published_per_row_stable_sort(sparsity, pattern):
    # 384 inputs: at 70% round() would prune 269 per row, the published int() 268.
    w, x = _layer(seed=1, rows=24, cols=384, tokens=256)
    col_sq = x.double().square().sum(0)
    metric = w.abs() * torch.sqrt(col_sq.float()).reshape(1, -1)
    mask = wanda_mask(w, col_sq, sparsity, pattern)
    assert torch.equal(mask, _published_wanda_mask(metric, sparsity, pattern))
    expected = int(384 * sparsity) if pattern is None else 384 // 2
    assert torch.all((~mask).sum(1) == expected)


def test_sparsegpt_matches_reference_algorithm():
    w, x = _layer(seed=2, rows=16, cols=32)
    h = x.t() @ x / x.shape[0]
    ours, keep, info = sparsegpt_prune(w, h, 0.5, (2, 4), blocksize=8)
    ref = _reference_sparsegpt_nm(w, h, 2, 4)
    assert torch.equal(keep, ref != 0)
    assert int((~keep).sum()) == w.numel() // 2
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-4)
    assert info["damp"] == 0.01


def test_dead_columns_are_pruned_first():
    w, x = _layer(seed=3, rows=8, cols=16)
    x[:, 3] = 0.0
    h = x.t() @ x
    out, keep, info = sparsegpt_prune(w, h, 0.25, None)
    assert info["dead_columns"] == 1
    assert not keep[:, 3].any()


def test_cholesky_failure_retries_with_more_dampening_and_warns():
    h = torch.eye(64)
    h[5, 5] = -0.5  # indefinite until the dampening reaches 0.1 * mean(diag)... and more
    with pytest.warns(RuntimeWarning, match="retrying with"):
        upper, damp = inverse_cholesky(h, 0.01, "toy")
    assert damp == pytest.approx(1.0)
    eye = torch.eye(64)
    damped = h + damp * torch.diagonal(h).mean() * eye
    torch.testing.assert_close(upper.t() @ upper, torch.linalg.inv(damped), atol=1e-5, rtol=1e-4)


def test_cholesky_never_falls_back_silently():
    h = torch.full((8, 8), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CholeskyError, match="toy"):
            inverse_cholesky(h, 0.01, "toy")
    h = -torch.eye(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CholeskyError):
            inverse_cholesky(h, 0.01, "toy", retries=2)


def test_owl_sparsities_by_hand():
    # ratios 0, 0.5, 1 -> scaled 0, lam, 2 lam; densities shifted to mean 1 - s.
    s, lam = 0.6, 0.08
    out = owl_sparsities([0.0, 0.5, 1.0], s, lam)
    assert out == pytest.approx([0.68, 0.6, 0.52])
    assert sum(out) / 3 == pytest.approx(s)
    assert owl_sparsities([0.2, 0.2], 0.5) == [0.5, 0.5]
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 100.0])]
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.1)
