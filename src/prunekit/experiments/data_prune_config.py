"""The ``data_prune:`` config section and the sweep axes it adds (kept fractions x scores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prunekit.experiments.typed import ConfigError

__all__ = ["DataPruneConfig", "KDConfig", "data_prune_axes"]


@dataclass
class KDConfig:
    """Distillation on the kept subset: ``alpha`` = 0 turns it off; ``tau`` the temperature;
    ``teacher``: a state_dict file of the same architecture (default: the run's dense model)."""

    alpha: float = 0.0
    tau: float = 4.0
    teacher: str | None = None

    def validate(self, path: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{path}.alpha: expected a number in [0, 1], got {self.alpha}")
        if self.tau <= 0:
            raise ConfigError(f"{path}.tau: expected a positive number, got {self.tau}")


@dataclass
class DataPruneConfig:
    """Data pruning: score the training set, keep ``fraction`` of it, train on that.

    ``score`` (``prunekit list "data scores"``; null = no data pruning) with ``options`` (the
    score's keyword options, e.g. ``runs``, ``epochs``); ``keep``: ``hard``, ``easy`` or
    ``auto`` (hard when ``fraction >= auto_threshold``, else easy); ``class_balanced`` keeps
    each class's share; ``kd`` distils from the dense model; ``budget``: ``epochs`` (the
    dense run's epochs over the subset) or ``iterations`` (the dense run's step count);
    ``on_mismatch``: what a cached scores file of other data does (``recompute`` or ``error``).
    """

    score: str | None = None
    fraction: float = 0.5
    keep: Literal["hard", "easy", "auto"] = "auto"
    auto_threshold: float = 0.5
    class_balanced: bool = False
    kd: KDConfig = field(default_factory=KDConfig)
    budget: Literal["epochs", "iterations"] = "epochs"
    options: dict[str, Any] = field(default_factory=dict)
    on_mismatch: Literal["recompute", "error"] = "recompute"

    @property
    def enabled(self) -> bool:
        return self.score is not None

    def validate(self, path: str) -> None:
        from prunekit.data_pruning import DATA_SCORES

        if self.score is not None and self.score not in DATA_SCORES:
            raise ConfigError(
                f"{path}.score: unknown data score {self.score!r}; allowed: "
                f"{', '.join(DATA_SCORES.names())}"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{path}.fraction: expected a number in (0, 1], got {self.fraction}")
        if not 0.0 < self.auto_threshold <= 1.0:
            raise ConfigError(
                f"{path}.auto_threshold: expected a number in (0, 1], got {self.auto_threshold}"
            )
        if self.score is not None:
            allowed = [o for o in DATA_SCORES.get(self.score).options() if o != "encoder"]
            for key in self.options:
                if key not in allowed:
                    raise ConfigError(
                        f"{path}.options.{key}: unknown option of data score {self.score!r}; "
                        f"allowed: {', '.join(allowed) or 'none'}"
                    )

    def label(self) -> str:
        """``<score>-<keep>[-kd]``, the method label of a data-pruning run."""
        return f"{self.score}-{self.keep}" + ("-kd" if self.kd.alpha > 0 else "")


def data_prune_axes(
    base: dict[str, Any], sweep: dict[str, Any], methods: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], str, list[float]] | None:
    """For a data-pruning sweep: (methods, the dotted key of the swept level, its values).

    ``sweep.scores`` adds one method per score (crossed with ``sweep.methods`` when both are
    given); ``sweep.fractions`` are the kept fractions. None when the sweep prunes weights.
    """
    scores = list(sweep.get("scores") or [])
    fractions = list(sweep.get("fractions") or [])
    dp = base.get("data_prune") or {}
    if not (scores or fractions or dp.get("score")):
        return None
    if scores:
        given = methods or {"": {}}
        methods = {
            (f"{label}-{s}" if label else s): {**overrides, "data_prune.score": s}
            for label, overrides in given.items()
            for s in scores
        }
    return methods, "data_prune.fraction", fractions or [float(dp.get("fraction", 0.5))]
