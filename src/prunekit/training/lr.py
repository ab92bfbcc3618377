"""Learning-rate schedules as objects giving the LR at iteration ``t`` (0 <= t < total).

Training schedules: constant, step, cosine, linear decay. Retraining schedules after pruning
(Zimmer et al., ICLR 2023), each built from the original training schedule and the retraining
length ``T``:

* ``FT``   constant eta_min (the smallest LR of the original schedule);
* ``LRW``  the last ``T`` iterations of the original schedule replayed;
* ``SLR``  the original schedule compressed into ``T``;
* ``CLR``  cosine from eta_max to eta_min;
* ``LLR``  eta_max then linear decay to 0;
* ``ALLR`` like LLR from eta_0 = clip(eta_max * d / sqrt(s), (T / T_train) * eta_max, eta_max),
  d = ||theta - prune(theta)|| / ||theta|| and s the fraction pruned in this phase.

SLR, CLR, LLR and ALLR begin with a warm-up over the first ``round(0.1 * T)`` iterations that rises
from 0 to eta_0 along a half cosine, ``eta_0 * (1 - cos(pi * t / W)) / 2``; the main part then runs
over the remaining ``T - W`` iterations with ``u = (t - W) / (T - W)`` going from 0 towards 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from prunekit.core.registry import Registry

RETRAIN_SCHEDULES: Registry = Registry("retraining schedule")
WARMUP_FRACTION = 0.1


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    return float(value)


class LRSchedule:
    """Base class: ``lr_at(t)`` for ``t`` in ``[0, total)``; ``eta_max`` / ``eta_min`` over that range."""

    name = "schedule"

    def __init__(self, total: int) -> None:
        self.total = _positive_int("total", total)

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        if not 0 <= t < self.total:
            raise ValueError(f"t: iteration {t} outside the schedule's range [0, {self.total})")
        return self.lr_at(int(t))

    @cached_property
    def _extremes(self) -> tuple[float, float]:
        values = [self.lr_at(t) for t in range(self.total)]
        return max(values), min(values)

    @property
    def eta_max(self) -> float:
        """Largest LR of the schedule."""
        return self._extremes[0]

    @property
    def eta_min(self) -> float:
        """Smallest LR of the schedule."""
        return self._extremes[1]

    def values(self) -> list[float]:
        return [self.lr_at(t) for t in range(self.total)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "total": self.total}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class ConstantLR(LRSchedule):
    """The same LR at every iteration."""

    name = "constant"

    def __init__(self, lr: float, total: int) -> None:
        super().__init__(total)
        self.lr = _non_negative("lr", lr)

    def lr_at(self, t: int) -> float:
        return self.lr

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lr": self.lr}


class StepLR(LRSchedule):
    """``lr * gamma**k`` after the k-th milestone (milestones as iterations or fractions of total)."""

    name = "step"

    def __init__(
        self, lr: float, total: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
    ) -> None:
        super().__init__(total)
        self.lr = _non_negative("lr", lr)
        self.gamma = _non_negative("gamma", gamma)
        points = []
        for m in milestones:
            if isinstance(m, float) and 0 < m < 1:
                points.append(int(round(m * total)))
            elif isinstance(m, int) and m > 0:
                points.append(m)
            else:
                raise ValueError(
                    f"milestones: expected iterations (int > 0) or fractions in (0, 1), got {m!r}"
                )
        self.milestones = sorted(points)

    def lr_at(self, t: int) -> float:
        passed = sum(1 for m in self.milestones if t >= m)
        return self.lr * self.gamma**passed

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "lr": self.lr,
            "milestones": self.milestones,
            "gamma": self.gamma,
        }


class CosineLR(LRSchedule):
    """``lr_min + (lr - lr_min) * (1 + cos(pi * t / total)) / 2``."""

    name = "cosine"

    def __init__(self, lr: float, total: int, lr_min: float = 0.0) -> None:
        super().__init__(total)
        self.lr = _non_negative("lr", lr)
        self.lr_min = _non_negative("lr_min", lr_min)

    def lr_at(self, t: int) -> float:
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (
            1 + math.cos(math.pi * t / self.total)
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lr": self.lr, "lr_min": self.lr_min}


class LinearLR(LRSchedule):
    """Linear decay ``lr * (1 - t / total)`` towards 0 (budgeted dense training)."""

    name = "linear"

    def __init__(self, lr: float, total: int) -> None:
        super().__init__(total)
        self.lr = _non_negative("lr", lr)

    def lr_at(self, t: int) -> float:
        return self.lr * (1.0 - t / self.total)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lr": self.lr}


TRAIN_SCHEDULES = {"constant": ConstantLR, "step": StepLR, "cosine": CosineLR, "linear": LinearLR}


def make_lr_schedule(name: str, lr: float, total: int, **kwargs: Any) -> LRSchedule:
    """Build a training schedule by name: ``constant``, ``step``, ``cosine`` or ``linear``."""
    try:
        cls = TRAIN_SCHEDULES[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"lr_schedule: unknown schedule {name!r}; valid: {', '.join(TRAIN_SCHEDULES)}"
        ) from None
    return cls(lr, total, **kwargs)


# ---------------------------------------------------------------------- retraining schedules
def warmup_length(total: int, fraction: float = WARMUP_FRACTION) -> int:
    """Iterations of warm-up in a retraining run of ``total`` iterations (``round(0.1 * T)``)."""
    return int(round(fraction * total))


class RetrainSchedule(LRSchedule):
    """A retraining schedule derived from the original training schedule ``original``."""

    warmup = False

    def __init__(self, original: LRSchedule, total: int) -> None:
        super().__init__(total)
        if not isinstance(original, LRSchedule):
            raise TypeError(f"original: expected an LRSchedule, got {type(original).__name__}")
        self.original = original
        self.warmup_iters = warmup_length(total) if self.warmup else 0

    @property
    def eta0(self) -> float:
        """The LR reached at the end of warm-up."""
        return self.original.eta_max

    def main(self, u: float) -> float:
        """The schedule after warm-up at progress ``u`` in [0, 1)."""
        raise NotImplementedError

    def lr_at(self, t: int) -> float:
        w = self.warmup_iters
        if t < w:
            return self.eta0 * 0.5 * (1.0 - math.cos(math.pi * t / w))
        return self.main((t - w) / (self.total - w))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "original": self.original.describe(),
            "warmup": self.warmup_iters,
        }


@RETRAIN_SCHEDULES.register("ft")
class FT(RetrainSchedule):
    """Fine-tuning: constant eta_min of the original schedule."""

    name = "ft"

    def main(self, u: float) -> float:
        return self.original.eta_min


@RETRAIN_SCHEDULES.register("lrw")
class LRW(RetrainSchedule):
    """LR rewinding: replay the last T iterations of the original schedule."""

    name = "lrw"

    def lr_at(self, t: int) -> float:
        start = max(self.original.total - self.total, 0)
        return self.original.lr_at(min(start + t, self.original.total - 1))


@RETRAIN_SCHEDULES.register("slr")
class SLR(RetrainSchedule):
    """Scaled LR: the original schedule compressed into T (after a 10% warm-up)."""

    name = "slr"
    warmup = True

    def main(self, u: float) -> float:
        t_orig = min(int(u * self.original.total), self.original.total - 1)
        return self.original.lr_at(t_orig)


@RETRAIN_SCHEDULES.register("clr")
class CLR(RetrainSchedule):
    """Cosine from eta_max to eta_min (after a 10% warm-up)."""

    name = "clr"
    warmup = True

    def main(self, u: float) -> float:
        hi, lo = self.original.eta_max, self.original.eta_min
        return lo + (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * u))


@RETRAIN_SCHEDULES.register("llr")
class LLR(RetrainSchedule):
    """Linear LR: eta_max then linear decay to 0 (after a 10% warm-up)."""

    name = "llr"
    warmup = True

    def main(self, u: float) -> float:
        return self.eta0 * (1.0 - u)


@RETRAIN_SCHEDULES.register("allr")
class ALLR(LLR):
    """Adaptive linear LR: LLR from eta_0 set by the norm change the pruning caused."""

    name = "allr"

    def __init__(
        self, original: LRSchedule, total: int, norm_change: float, pruned_fraction: float
    ) -> None:
        super().__init__(original, total)
        self.norm_change = _non_negative("norm_change", norm_change)
        if not 0.0 < pruned_fraction <= 1.0:
            raise ValueError(
                f"pruned_fraction: expected the fraction pruned in this phase in (0, 1], got "
                f"{pruned_fraction!r}"
            )
        self.pruned_fraction = float(pruned_fraction)

    @cached_property
    def eta0(self) -> float:  # type: ignore[override]
        return allr_initial_lr(
            self.original.eta_max,
            self.norm_change,
            self.pruned_fraction,
            self.total,
            self.original.total,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "norm_change": self.norm_change,
            "pruned_fraction": self.pruned_fraction,
            "eta0": self.eta0,
        }


def allr_initial_lr(
    eta_max: float, norm_change: float, pruned_fraction: float, total: int, train_total: int
) -> float:
    """``clip(eta_max * d / sqrt(s), min=(T / T_train) * eta_max, max=eta_max)``."""
    low = min(total / train_total, 1.0) * eta_max
    return min(max(eta_max * norm_change / math.sqrt(pruned_fraction), low), eta_max)


def make_retrain_schedule(
    name: str,
    original: LRSchedule,
    total: int,
    *,
    norm_change: float | None = None,
    pruned_fraction: float | None = None,
) -> RetrainSchedule:
    """Build a retraining schedule by name (``ft``, ``lrw``, ``slr``, ``clr``, ``llr``, ``allr``).

    ``allr`` needs ``norm_change`` (d) and ``pruned_fraction`` (s) of the pruning step it follows
    (see :func:`prunekit.training.pruning_norm_change`).
    """
    cls = RETRAIN_SCHEDULES.get(name, argument="retrain_schedule")
    if cls is ALLR:
        if norm_change is None or pruned_fraction is None:
            raise ValueError("retrain_schedule 'allr': needs norm_change and pruned_fraction")
        return ALLR(original, total, norm_change, pruned_fraction)
    return cls(original, total)


def list_retrain_schedules() -> list[str]:
    """Names of the retraining schedules."""
    return RETRAIN_SCHEDULES.names()
