"""Pruning at initialisation: score the untrained network with a criterion, then train it sparse.

One stage (``phase_1``, no dense model): prune the freshly initialised model with the prune
spec's criterion (SNIP, GraSP, SynFlow, magnitude, ...) on shuffled training batches, then train
it for ``train.epochs`` with the masks kept. The criterion is recomputed on the same initial
weights when a killed run resumes, and the Trainer continues from its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.at_init import prune_at_init
from prunekit.core.targets import Targets
from prunekit.data.base import DatasetBundle, TensorData
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage
from prunekit.recipes.registry import Recipe, register_recipe
from prunekit.recipes.single_run import phase_stage, run_in_memory, trainer_checkpoint
from prunekit.recipes.spec import ExperimentResult, PruneSpec, TrainSpec, spec_dict

__all__ = ["AtInitOptions", "ShuffledBatches", "at_init"]


class ShuffledBatches:
    """Re-iterable ``(inputs, targets)`` batches of ``data`` in a seeded random order."""

    def __init__(self, data: TensorData, batch_size: int, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(
            len(self.data), generator=torch.Generator().manual_seed(self.seed), device="cpu"
        )
        for start in range(0, len(order), self.batch_size):
            yield self.data[order[start : start + self.batch_size]]


@dataclass
class AtInitOptions:
    """The criterion's batches: ``num_batches`` of them (None: the criterion's default, e.g. 1
    for SNIP / GraSP) of ``batch_size`` examples (None: ``train.batch_size``)."""

    num_batches: int | None = None
    batch_size: int | None = None


def _criterion_options(ctx: RunContext) -> dict[str, Any]:
    options = dict(ctx.prune.criterion_options or {})
    if ctx.options.num_batches is not None:
        options["num_batches"] = ctx.options.num_batches
    return options


def _train(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
    p, t = ctx.prune, ctx.train
    batches = ShuffledBatches(ctx.data.train, ctx.options.batch_size or t.batch_size, t.seed)
    masks, table = prune_at_init(
        ctx.model,
        p.method,
        p.sparsity,
        batches,
        allocation=p.allocation,
        targets=p.targets,
        seed=t.seed,
        criterion_options=_criterion_options(ctx),
    )
    pruned = ctx.metrics()
    total = ctx.original.total
    ctx.log(f"at_init: pruned with {p.method}; training {total} iterations")
    ckpt = trainer_checkpoint(ctx, directory)
    trainer = ctx.fit(ctx.original, total, masks, t.seed, ckpt)
    ctx.masks = trainer.masks.clone() if trainer.masks is not None else masks
    trainer.set_masks(None)
    return {
        "phase": 1,
        "target_sparsity": p.sparsity,
        "sparsity": ctx.masks.sparsity,
        "retrain_schedule": "from_init",
        "retrain_iterations": total,
        "lr0": ctx.original.lr_at(0),
        "pruned": pruned,
        "retrained": ctx.metrics(),
        "details": {"densities": table.densities(), "density_table": table.to_dict()},
    }


def _stages(ctx: RunContext) -> list[Stage]:
    return [phase_stage(_train)]


def _configure(cfg: Any) -> AtInitOptions:
    return AtInitOptions(cfg.data.calibration_batches, cfg.data.calibration_batch_size)


register_recipe(
    Recipe(
        "at_init",
        "Prune the untrained model (e.g. snip, grasp, synflow), then train it sparse.",
        _configure,
        _stages,
        trains_dense=False,
        prunes_once=True,
    )
)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))


def at_init(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    method: str,
    sparsity: float,
    *,
    allocation: str = "global",
    targets: Targets | None = None,
    num_batches: int | None = None,
    criterion_batch_size: int | None = None,
    criterion_options: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> ExperimentResult:
    """Prune the untrained ``model`` with criterion ``method``, then train it sparse.

    The criterion scores batches of ``data.train`` (shuffled with ``train.seed``, of
    ``criterion_batch_size`` examples, default ``train.batch_size``; ``num_batches`` of them, or
    the criterion's default when None: SNIP / GraSP read 1, Taylor 8; SynFlow only reads the
    input shape). The sparse network is then trained for ``train.epochs`` with the masks kept.
    With ``checkpoint_dir`` the training checkpoints there (every ``checkpoint_every`` steps and
    at the end) and resumes from a checkpoint found there.

    ``details["densities"]`` maps each layer to the density the criterion chose (what
    pruning at initialisation mostly contributes, Frankle et al. 2021) and
    ``details["density_table"]`` is the full :class:`~prunekit.core.at_init.DensityTable`.
    ``phases[0].pruned`` holds the metrics right after pruning, ``final`` after training.
    """
    prune = PruneSpec(
        sparsity=sparsity,
        method=method,
        allocation=allocation,
        targets=targets,
        criterion_options=criterion_options,
    )
    options = AtInitOptions(num_batches, criterion_batch_size)
    ctx = run_in_memory(
        "at_init", model, data, train, prune, options, checkpoint_dir, checkpoint_every
    )
    config = spec_dict(
        train=train,
        method=method,
        sparsity=sparsity,
        allocation=allocation,
        num_batches=num_batches,
        criterion_batch_size=criterion_batch_size,
        criterion_options={k: v for k, v in _criterion_options(ctx).items() if _plain(v)},
    )
    return ctx.result(f"at_init_{method}", config)
