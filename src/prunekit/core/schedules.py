"""Pruning schedules: *when* pruning happens and to which sparsity.

Each schedule is a small object with ``sparsity_at(step)`` and ``pruning_steps()``. What a step
means depends on the schedule: a pruning phase for one-shot / IMP / BIMP (step 0 is the dense
model, step j the model after phase j), a training iteration for GMP.

>>> IMP(sparsity=0.875, phases=3).targets()
[0.5, 0.75, 0.875]
"""

from __future__ import annotations

import math
from typing import Any

from prunekit.core.registry import Registry

SCHEDULES: Registry = Registry("schedule")


def _sparsity(name: str, value: Any, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number in [0, 1), got {type(value).__name__}")
    low_ok = value >= 0 if allow_zero else value > 0
    if math.isnan(value) or not low_ok or value >= 1:
        raise ValueError(
            f"{name}: expected a number in {'[' if allow_zero else '('}0, 1), got {value}"
        )
    return float(value)


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def split_budget(total: int, parts: int) -> list[int]:
    """Split ``total`` iterations evenly over ``parts`` phases; the remainder goes to the last."""
    _count("parts", parts)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total: expected a non-negative integer, got {total!r}")
    base = total // parts
    return [base] * (parts - 1) + [total - base * (parts - 1)]


class PruningSchedule:
    """Base class of pruning schedules."""

    name = "schedule"

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after ``step`` (a phase, or an iteration for GMP)."""
        raise NotImplementedError

    def pruning_steps(self) -> list[int]:
        """The steps at which pruning happens."""
        raise NotImplementedError

    def targets(self) -> list[float]:
        """The sparsity reached at each pruning step, in order."""
        return [self.sparsity_at(s) for s in self.pruning_steps()]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


@SCHEDULES.register("one_shot")
class OneShot(PruningSchedule):
    """Prune once to the final sparsity, then retrain (or not)."""

    name = "one_shot"

    def __init__(self, sparsity: float) -> None:
        self.sparsity = _sparsity("sparsity", sparsity)

    def sparsity_at(self, step: int) -> float:
        return self.sparsity if step >= 1 else 0.0

    def pruning_steps(self) -> list[int]:
        return [1]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sparsity": self.sparsity}


@SCHEDULES.register("imp")
class IMP(PruningSchedule):
    """Iterative magnitude pruning: J phases, sparsity ``1 - (1 - S)**(j / J)`` after phase j.

    Each phase removes the same fraction ``1 - (1 - S)**(1 / J)`` of the weights still present.
    Between phases the network is retrained; see :func:`prunekit.training.run_imp` for weight
    rewinding (to initialisation or iteration k) and LR rewinding.
    """

    name = "imp"

    def __init__(self, sparsity: float, phases: int) -> None:
        self.sparsity = _sparsity("sparsity", sparsity)
        self.phases = _count("phases", phases)

    @classmethod
    def from_rate(cls, sparsity: float, rate: float = 0.2) -> IMP:
        """Phases needed to reach ``sparsity`` removing ``rate`` of the survivors each time (LTH: 20%)."""
        rate = _sparsity("rate", rate, allow_zero=False)
        phases = max(1, math.ceil(math.log(1 - sparsity) / math.log(1 - rate) - 1e-9))
        return cls(sparsity, phases)

    @property
    def rate(self) -> float:
        """Fraction of the remaining weights pruned in every phase."""
        return 1.0 - (1.0 - self.sparsity) ** (1.0 / self.phases)

    def sparsity_at(self, step: int) -> float:
        j = min(max(int(step), 0), self.phases)
        if j == self.phases:
            return self.sparsity  # exact at the end, free of floating-point drift
        return 1.0 - (1.0 - self.sparsity) ** (j / self.phases)

    def pruning_steps(self) -> list[int]:
        return list(range(1, self.phases + 1))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sparsity": self.sparsity, "phases": self.phases}


@SCHEDULES.register("bimp")
class BIMP(IMP):
    """Budgeted IMP (Zimmer et al. 2023): IMP whose retraining budget is split over the phases.

    Dense training uses a linear LR decay to 0; the total ``retrain_iterations`` are split evenly
    over the phases with the remainder going to the last, and every phase is retrained with ALLR.
    """

    name = "bimp"

    def __init__(self, sparsity: float, phases: int, retrain_iterations: int = 0) -> None:
        super().__init__(sparsity, phases)
        if isinstance(retrain_iterations, bool) or not isinstance(retrain_iterations, int):
            raise ValueError(f"retrain_iterations: expected an integer, got {retrain_iterations!r}")
        if retrain_iterations < 0:
            raise ValueError(f"retrain_iterations: expected >= 0, got {retrain_iterations}")
        self.retrain_iterations = retrain_iterations

    def budgets(self) -> list[int]:
        """Retraining iterations of each phase."""
        return split_budget(self.retrain_iterations, self.phases)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "retrain_iterations": self.retrain_iterations}


@SCHEDULES.register("gmp")
class GMP(PruningSchedule):
    """Gradual magnitude pruning (Zhu & Gupta 2017), cubic in the training iteration.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` at ``t = t0, t0 + dt, ..., t0 + n*dt``;
    between pruning steps the sparsity holds, before ``t0`` it is ``s_i`` (0 means dense), after the
    last step it is ``s_f``.
    """

    name = "gmp"

    def __init__(
        self,
        final_sparsity: float,
        start: int,
        end: int,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
    ) -> None:
        self.final_sparsity = _sparsity("final_sparsity", final_sparsity)
        self.initial_sparsity = _sparsity("initial_sparsity", initial_sparsity)
        self.start = _count("start", start, minimum=0)
        self.frequency = _count("frequency", frequency)
        if isinstance(end, bool) or not isinstance(end, int) or end <= start:
            raise ValueError(f"end: expected an integer iteration after start={start}, got {end!r}")
        # n pruning intervals of dt: the last pruning step is the last multiple of dt before end.
        self.num_steps = (end - start) // self.frequency
        if self.num_steps < 1:
            raise ValueError(
                f"frequency: {frequency} leaves no pruning interval between start={start} and end={end}"
            )
        self.end = self.start + self.num_steps * self.frequency

    @classmethod
    def for_training(
        cls,
        final_sparsity: float,
        total_iterations: int,
        start_fraction: float = 0.1,
        end_fraction: float = 0.6,
        frequency: int | None = None,
        initial_sparsity: float = 0.0,
    ) -> GMP:
        """GMP over a run of ``total_iterations``, pruning between the two fractions of training.

        The default ends at 60% of training so that pruning finishes before the LR has decayed;
        ``frequency`` defaults to 1% of training (at least 1).
        """
        _count("total_iterations", total_iterations, minimum=2)
        start = int(start_fraction * total_iterations)
        end = int(end_fraction * total_iterations)
        if frequency is None:
            frequency = max(1, total_iterations // 100)
        return cls(final_sparsity, start, end, frequency, initial_sparsity)

    def sparsity_at(self, step: int) -> float:
        if step < self.start:
            return self.initial_sparsity
        k = min((step - self.start) // self.frequency, self.num_steps)
        if k == self.num_steps:
            return self.final_sparsity
        frac = 1.0 - k / self.num_steps
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * frac**3

    def pruning_steps(self) -> list[int]:
        return [self.start + k * self.frequency for k in range(self.num_steps + 1)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "final_sparsity": self.final_sparsity,
            "initial_sparsity": self.initial_sparsity,
            "start": self.start,
            "end": self.end,
            "frequency": self.frequency,
        }


def create_schedule(name: str, **kwargs: Any) -> PruningSchedule:
    """Build a pruning schedule by name, e.g. ``create_schedule("imp", sparsity=0.9, phases=5)``."""
    cls = SCHEDULES.get(name, argument="schedule")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"schedule {name!r}: {err}") from err


def list_schedules() -> list[str]:
    """Names of the registered pruning schedules."""
    return SCHEDULES.names()


__all__ = [
    "BIMP",
    "GMP",
    "IMP",
    "SCHEDULES",
    "OneShot",
    "PruningSchedule",
    "create_schedule",
    "list_schedules",
    "split_budget",
]
