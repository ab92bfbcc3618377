"""The typed options every recipe shares and the plain-data result every recipe returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from prunekit.core.masks import MaskSet
from prunekit.core.targets import Targets


@dataclass
class TrainSpec:
    """The original (dense) training run; retraining schedules are derived from it.

    ``checkpoint_every``: Trainer checkpoints every that many iterations when the recipe runs in
    a directory (``out_dir=``), so that a killed run resumes; ignored in memory.
    """

    epochs: float = 20.0
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "step"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    seed: int = 0
    device: str | None = None
    progress: bool = False
    checkpoint_every: int | None = None


@dataclass
class PruneSpec:
    """What to prune and how (see :func:`prunekit.prune`).

    ``method`` is the criterion; ``criterion_options`` its keyword options. Data-driven criteria
    (SNIP, GraSP, Taylor, ...) score on the first ``calibration_batches`` training batches of
    ``calibration_batch_size`` examples.
    """

    sparsity: float = 0.9
    method: str = "magnitude"
    allocation: str = "global"
    targets: Targets | None = None
    min_keep: int | float | None = None
    criterion_options: dict[str, Any] | None = None
    calibration_batches: int = 4
    calibration_batch_size: int = 128


@dataclass
class PhaseResult:
    """One pruning phase: the sparsity reached and metrics before / after retraining."""

    phase: int
    target_sparsity: float
    sparsity: float
    retrain_schedule: str
    retrain_iterations: int
    lr0: float
    pruned: dict[str, float] = field(default_factory=dict)
    retrained: dict[str, float] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    """Plain-data result of a recipe; ``masks`` holds the final mask set (not in ``to_dict``).

    ``details`` holds recipe-specific measurements (JSON-ready), e.g. the PQ Index per phase.
    """

    recipe: str
    dense: dict[str, float]
    phases: list[PhaseResult]
    final: dict[str, float]
    dense_iterations: int
    retrain_iterations: int
    config: dict[str, Any] = field(default_factory=dict)
    masks: MaskSet | None = None
    rewind_state: dict[str, Tensor] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (without the mask set and the rewind state)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("masks", "rewind_state")}
        out["phases"] = [asdict(p) for p in self.phases]
        return out


def spec_dict(**kwargs: Any) -> dict[str, Any]:
    """``kwargs`` as plain data for :attr:`ExperimentResult.config` (dataclasses flattened,
    targets left out: they hold module classes)."""
    out = {}
    for key, value in kwargs.items():
        if hasattr(value, "__dataclass_fields__"):
            value = {k: v for k, v in asdict(value).items() if k != "targets"}
        out[key] = value
    return out
