"""prunekit: prune PyTorch networks.

>>> import prunekit, torch
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
>>> masks = prunekit.prune(model, sparsity=0.9, method="magnitude", allocation="global")
>>> round(masks.sparsity, 2)
0.9
"""

import os as _os
from collections.abc import Callable as _Callable
from collections.abc import Sequence as _Sequence
from typing import TYPE_CHECKING as _TYPE_CHECKING

import torch as _torch

from prunekit import structured
from prunekit.core.allocation import list_allocations
from prunekit.core.at_init import DensityTable, prune_at_init
from prunekit.core.errors import (
    DeviceError,
    DiskFullError,
    FileFormatError,
    PrunekitError,
    StaleFileError,
)
from prunekit.core.masks import MaskEnforcer, MaskMismatchError, MaskSet
from prunekit.core.metrics import count_macs, count_params
from prunekit.core.pqi import SAPSchedule, pq_index, pq_index_report, sap_prune_count
from prunekit.core.prune import compute_masks, prune, pruning_plan
from prunekit.core.report import SparsityReport, sparsity_report
from prunekit.core.schedules import create_schedule, list_schedules
from prunekit.core.scores import ElementwiseScores, Scores, TensorScores
from prunekit.core.targets import Targets, select_targets
from prunekit.criteria import (
    Criterion,
    create_criterion,
    get_criterion,
    list_criteria,
    list_methods,
    register_criterion,
)
from prunekit.criteria.gradient import MovementTracker
from prunekit.data import DatasetBundle, create_dataset, list_datasets
from prunekit.export import load_compressed, load_compressed_into, save_compressed
from prunekit.models import create_model, list_models
from prunekit.training import Trainer
from prunekit.training.sparse_training import GraNet, RigL

if _TYPE_CHECKING:
    from prunekit.experiments.reload import LoadedRun as _LoadedRun

__version__ = "0.1.0"


def load_run(
    run_dir: "str | _os.PathLike[str]",
    *,
    allow_import: "_Sequence[str] | None" = None,
    factory: "_Callable[..., _torch.nn.Module] | None" = None,
    device: "str | _torch.device" = "cpu",
) -> "_LoadedRun":
    """Reload a finished run: ``.model`` (final weights), ``.masks``, ``.metrics``.

    See :func:`prunekit.experiments.reload.load_run`; a model built by the user's
    ``module:function`` factory needs ``factory=`` or ``allow_import=["mypkg"]``.
    """
    from prunekit.experiments.reload import load_run as _load_run

    return _load_run(run_dir, allow_import=allow_import, factory=factory, device=device)


__all__ = [
    "DeviceError",
    "DiskFullError",
    "FileFormatError",
    "PrunekitError",
    "StaleFileError",
    "Criterion",
    "DatasetBundle",
    "DensityTable",
    "GraNet",
    "MovementTracker",
    "RigL",
    "SAPSchedule",
    "Trainer",
    "create_dataset",
    "create_schedule",
    "list_datasets",
    "list_schedules",
    "load_run",
    "pq_index",
    "pq_index_report",
    "prune_at_init",
    "sap_prune_count",
    "ElementwiseScores",
    "MaskEnforcer",
    "MaskMismatchError",
    "MaskSet",
    "Scores",
    "SparsityReport",
    "Targets",
    "TensorScores",
    "compute_masks",
    "count_macs",
    "count_params",
    "structured",
    "create_criterion",
    "create_model",
    "get_criterion",
    "list_allocations",
    "list_criteria",
    "list_methods",
    "list_models",
    "load_compressed",
    "load_compressed_into",
    "prune",
    "pruning_plan",
    "register_criterion",
    "save_compressed",
    "select_targets",
    "sparsity_report",
]
