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

from prunekit.core.scores import Scores

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
    if not torch.isfinite(chunk.sum()) and not bool(torch.isfinite(chunk).all()):
        raise NonFiniteScoreError(name)


def _bounds(samples: Tensor, q: float) -> tuple[float, float]:
    """Sample quantiles that bracket quantile q of the population with high probability."""
    m = samples.numel()
    if m == 0:
        return -math.inf, math.inf
    delta = 6.0 * math.sqrt(max(q * (1.0 - q), 1.0 / m) / m) + 2.0 / m
    lo_index = math.floor((q - delta) * m)
    hi_index = math.ceil((q + delta) * m)
    # k-th value selections (linear time) instead of sorting the sample
    lo = float(samples.kthvalue(lo_index + 1).values) if lo_index >= 0 else -math.inf
    hi = float(samples.kthvalue(hi_index + 1).values) if hi_index < m else math.inf
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
        index = torch.randint(size, (count,), generator=generator, device="cpu")  # seeded draw
        values = scores.gather(name, index).float()
        if name in existing:
            values = values[existing[name].reshape(-1)[index.to(existing[name].device)]]
        parts.append(values)
    return torch.cat(parts)


def _free(existing: Mapping[str, Tensor], name: str, start: int, stop: int) -> Tensor | None:
    mask = existing.get(name)
    return None if mask is None else mask.reshape(-1)[start:stop]


def _chunks(scores: Scores, name: str):
    """(start, stop, scores) over one parameter; the score buffer is reused between chunks."""
    numel = scores.numel(name)
    buffer = None
    for start in range(0, numel, CHUNK):
        stop = min(start + CHUNK, numel)
        chunk = scores.chunk(name, start, stop, out=buffer)
        if stop - start == CHUNK:
            buffer = chunk
        yield start, stop, chunk


def _counting_pass(
    scores: Scores,
    names: Sequence[str],
    existing: Mapping[str, Tensor],
    lo: float,
    hi: float,
    masks: dict[str, Tensor],
) -> tuple[int, list[tuple[str, Tensor, Tensor]]]:
    """Write keep = score > lo into the masks; count free entries <= lo; collect (lo, hi) entries."""
    at_or_below = 0
    candidates: list[tuple[str, Tensor, Tensor]] = []
    band_buffer: Tensor | None = None  # reused: per-chunk temporaries cost page faults
    for name in names:
        flat_mask = masks[name].reshape(-1)
        for start, stop, chunk in _chunks(scores, name):
            _check_finite(name, chunk)
            keep = flat_mask[start:stop]
            torch.gt(chunk, lo, out=keep)
            free = _free(existing, name, start, stop)
            if free is not None:
                keep &= free
                at_or_below += int(torch.count_nonzero(free)) - int(torch.count_nonzero(keep))
            else:
                at_or_below += (stop - start) - int(torch.count_nonzero(keep))
            if band_buffer is None or band_buffer.device != chunk.device:
                band_buffer = torch.empty(CHUNK, dtype=torch.bool, device=chunk.device)
            band = band_buffer[: stop - start]
            torch.lt(chunk, hi, out=band)
            band &= keep
            index = band.nonzero().squeeze(1)
            if index.numel():
                candidates.append((name, (index + start).cpu(), chunk[index].float().cpu()))
    return at_or_below, candidates


def _count_equal(
    scores: Scores, names: Sequence[str], existing: Mapping[str, Tensor], value: float
) -> tuple[int, int]:
    """Free entries strictly below ``value`` and equal to it."""
    below = equal = 0
    for name in names:
        for start, stop, chunk in _chunks(scores, name):
            free = _free(existing, name, start, stop)
            lt, eq = chunk < value, chunk == value
            if free is not None:
                lt &= free
                eq &= free
            below += int(torch.count_nonzero(lt))
            equal += int(torch.count_nonzero(eq))
    return below, equal


def _assign_ties(
    scores: Scores,
    names: Sequence[str],
    existing: Mapping[str, Tensor],
    value: float,
    n_pruned: int,
    masks: dict[str, Tensor],
) -> None:
    """Among free entries equal to ``value``, prune the first ``n_pruned`` (layer, index) and keep
    the rest. Works with masked fills, not index lists, since ties can number in the millions."""
    for name in names:
        flat_mask = masks[name].reshape(-1)
        for start, stop, chunk in _chunks(scores, name):
            eq = chunk == value
            free = _free(existing, name, start, stop)
            if free is not None:
                eq &= free
            keep = flat_mask[start:stop]
            count = int(torch.count_nonzero(eq))
            if n_pruned >= count:
                keep.masked_fill_(eq, False)
            elif n_pruned == 0:
                keep |= eq
            else:
                cut = int(eq.nonzero()[n_pruned - 1]) + 1  # just after the last tie to prune
                keep[:cut].masked_fill_(eq[:cut], False)
                keep[cut:] |= eq[cut:]
            n_pruned -= min(n_pruned, count)


def _prune_candidates(candidates: list[tuple[str, Tensor, Tensor]], count: int, masks) -> None:
    """Prune the ``count`` lowest candidates; equal values go in (layer, index) order.

    A k-th value selection plus one comparison replaces a full sort of the candidates.
    """
    if count <= 0:
        return
    values = torch.cat([c[2] for c in candidates])
    if count < values.numel():
        threshold = values.kthvalue(count).values
        chosen = values < threshold
        ties_needed = count - int(torch.count_nonzero(chosen))
        ties = (values == threshold).nonzero().squeeze(1)[:ties_needed]
        chosen[ties] = True
    else:
        chosen = torch.ones_like(values, dtype=torch.bool)
    offset = 0
    for name, index, _ in candidates:
        picked = index[chosen[offset : offset + index.numel()]]
        offset += index.numel()
        if picked.numel():
            masks[name].view(-1)[picked.to(masks[name].device)] = False


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
    # the earlier masks may sit elsewhere (e.g. CPU masks, scores on a GPU): move them once
    existing = {n: existing[n].to(scores.device(n)) for n in names if existing and n in existing}
    total = sum(scores.numel(n) for n in names)
    already = sum(existing[n].numel() - int(torch.count_nonzero(existing[n])) for n in existing)
    if not 0 <= k <= total:
        raise ValueError(f"cannot prune {k} of {total} entries")
    if k < already:
        raise ValueError(
            f"{already} entries are already pruned, more than the {k} asked for: masks never grow"
        )
    masks = {
        n: torch.empty(scores.shape(n), dtype=torch.bool, device=scores.device(n)) for n in names
    }
    free = total - already
    remaining = k - already
    if remaining == 0 or remaining == free:
        for n in names:
            for _, _, chunk in _chunks(scores, n):  # still reject non-finite scores
                _check_finite(n, chunk)
            base = existing[n].clone() if n in existing else torch.ones_like(masks[n])
            masks[n] = base if remaining == 0 else torch.zeros_like(masks[n])
        return masks

    generator = torch.Generator().manual_seed(seed)
    lo, hi = _bounds(_sample(scores, names, existing, generator), remaining / free)
    for _attempt in range(3):
        at_or_below, candidates = _counting_pass(scores, names, existing, lo, hi, masks)
        n_between = sum(c[1].numel() for c in candidates)
        need = remaining - at_or_below
        if 0 <= need <= n_between:
            _prune_candidates(candidates, need, masks)
            return masks
        if need < 0:
            # Too many at or below lo: either lo is tied many times (e.g. exact zeros) or the
            # sample overshot.
            below, equal = _count_equal(scores, names, existing, lo)
            if below <= remaining <= below + equal:
                _assign_ties(scores, names, existing, lo, remaining - below, masks)
                return masks
            lo = -math.inf
            continue
        # Too few below hi: hi may be tied many times, or the sample undershot.
        below, equal = _count_equal(scores, names, existing, hi)
        if below <= remaining <= below + equal:
            _prune_candidates(candidates, n_between, masks)
            _assign_ties(scores, names, existing, hi, remaining - below, masks)
            return masks
        hi = math.inf
    raise RuntimeError("threshold selection did not converge")  # unreachable: bounds widen to inf
