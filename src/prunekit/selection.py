"""Exact selection of the k lowest scores across many tensors without sorting or concatenating.

The threshold comes from a random sample of the scores; one counting pass over the real scores then
fixes it exactly. Each pass reads the scores chunk by chunk, so the extra memory is the boolean
masks being built plus one chunk, never a copy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from prunekit.scores import Scores

CHUNK = (
    1 << 20
)  # elements per chunk: big enough to amortise overhead, small enough to stay in cache
SAMPLE = 1 << 18  # sampled scores used to bracket the threshold


class NonFiniteScoreError(ValueError):
    """A score (and usually the weight behind it) is NaN or infinite."""

    def __init__(self, name: str) -> None:
        super().__init__(f"scores of parameter {name!r} contain NaN or inf")
        self.name = name


def _check_finite(name: str, chunk: Tensor) -> None:
    # A sum is a cheap screen: NaN or inf anywhere makes it non-finite. Confirm exactly, since a
    # sum of large finite values can overflow too.
    if not torch.isfinite(chunk.sum(dtype=torch.float64)) and not bool(torch.isfinite(chunk).all()):
        raise NonFiniteScoreError(name)


def _bounds(samples: Tensor, q: float) -> tuple[float, float]:
    """Sample quantiles that bracket quantile q of the population with high probability."""
    m = samples.numel()
    if m == 0:
        return -math.inf, math.inf
    sorted_samples = samples.sort().values
    delta = 6.0 * math.sqrt(max(q * (1.0 - q), 1.0 / m) / m) + 2.0 / m
    lo_index = math.floor((q - delta) * m)
    hi_index = math.ceil((q + delta) * m)
    lo = float(sorted_samples[lo_index]) if lo_index >= 0 else -math.inf
    hi = float(sorted_samples[hi_index]) if hi_index < m else math.inf
    return lo, hi


def _sample(
    scores: Scores,
    names: Sequence[str],
    existing: Mapping[str, Tensor],
    generator: torch.Generator,
) -> Tensor:
    sizes = [scores.numel(n) for n in names]
    total = sum(sizes)
    if total <= SAMPLE:
        parts = [scores.full(n).reshape(-1).float() for n in names]
        keeps = [existing[n].reshape(-1) if n in existing else None for n in names]
        return torch.cat([p[k] if k is not None else p for p, k in zip(parts, keeps)])
    parts = []
    for name, size in zip(names, sizes):
        count = max(1, round(SAMPLE * size / total))
        index = torch.randint(size, (count,), generator=generator)
        values = scores.gather(name, index).float()
        if name in existing:
            values = values[existing[name].reshape(-1)[index]]
        parts.append(values)
    return torch.cat(parts)


def _counting_pass(
    scores: Scores,
    names: Sequence[str],
    existing: Mapping[str, Tensor],
    lo: float,
    hi: float,
    device_masks: dict[str, Tensor],
) -> tuple[int, list[tuple[str, Tensor, Tensor]]]:
    """Write keep = score >= lo into the masks; count entries below lo; collect [lo, hi] entries."""
    below = 0
    candidates: list[tuple[str, Tensor, Tensor]] = []
    for name in names:
        numel = scores.numel(name)
        flat_mask = device_masks[name].reshape(-1)
        flat_existing = existing[name].reshape(-1) if name in existing else None
        for start in range(0, numel, CHUNK):
            stop = min(start + CHUNK, numel)
            chunk = scores.chunk(name, start, stop)
            _check_finite(name, chunk)
            keep = flat_mask[start:stop]
            torch.ge(chunk, lo, out=keep)
            if flat_existing is not None:
                keep &= flat_existing[start:stop]
                below += int(flat_existing[start:stop].sum()) - int(keep.sum())
            else:
                below += (stop - start) - int(keep.sum())
            in_band = chunk <= hi
            in_band &= keep
            index = in_band.nonzero().squeeze(1)
            if index.numel():
                candidates.append((name, (index + start).cpu(), chunk[index].float().cpu()))
    return below, candidates


def keep_masks_lowest_pruned(
    scores: Scores,
    names: Sequence[str],
    k: int,
    existing: Mapping[str, Tensor] | None = None,
    *,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Boolean keep-masks over ``names`` that prune exactly the ``k`` lowest scores in total.

    Entries already pruned in ``existing`` stay pruned and count towards ``k``. Ties are broken
    deterministically: the earlier layer (in ``names`` order), then the lower flat index, goes first.

    Raises:
        ValueError: ``k`` is smaller than the number already pruned, or larger than the total.
        NonFiniteScoreError: a score is NaN or infinite.
    """
    existing = {n: existing[n] for n in names if existing and n in existing}
    total = sum(scores.numel(n) for n in names)
    already = sum(int((~existing[n]).sum()) for n in existing)
    if not 0 <= k <= total:
        raise ValueError(f"cannot prune {k} of {total} entries")
    if k < already:
        raise ValueError(
            f"{already} entries are already pruned, more than the {k} asked for: masks never grow"
        )
    device = {n: scores.device(n) for n in names}
    masks = {n: torch.empty(scores.shape(n), dtype=torch.bool, device=device[n]) for n in names}
    free = total - already
    remaining = k - already
    if remaining == 0 or remaining == free:
        for n in names:
            base = existing[n].clone() if n in existing else torch.ones_like(masks[n])
            masks[n] = base if remaining == 0 else torch.zeros_like(masks[n])
            for start in range(0, scores.numel(n), CHUNK):  # still reject non-finite scores
                _check_finite(n, scores.chunk(n, start, min(start + CHUNK, scores.numel(n))))
        return masks

    generator = torch.Generator().manual_seed(seed)
    lo, hi = _bounds(_sample(scores, names, existing, generator), remaining / free)
    for _attempt in range(3):
        below, candidates = _counting_pass(scores, names, existing, lo, hi, masks)
        n_candidates = sum(c[1].numel() for c in candidates)
        need = remaining - below
        if need < 0:
            lo = -math.inf  # the sample overshot: widen downwards and count again
            continue
        if need > n_candidates:
            hi = math.inf
            continue
        if need:
            values = torch.cat([c[2] for c in candidates])
            order = values.sort(stable=True).indices[:need]
            owner = torch.cat(
                [torch.full((c[1].numel(),), i, dtype=torch.long) for i, c in enumerate(candidates)]
            )
            flat_index = torch.cat([c[1] for c in candidates])
            chosen_owner = owner[order]
            chosen_index = flat_index[order]
            for i, (name, _, _) in enumerate(candidates):
                picked = chosen_index[chosen_owner == i]
                if picked.numel():
                    masks[name].view(-1)[picked.to(masks[name].device)] = False
        return masks
    raise RuntimeError("threshold selection did not converge")  # unreachable: bounds widen to inf
