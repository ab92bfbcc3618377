"""prunekit: prune PyTorch networks.

>>> import prunekit, torch
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
>>> masks = prunekit.prune(model, sparsity=0.9, method="magnitude", allocation="global")
>>> round(masks.sparsity, 2)
0.9
"""

from prunekit.allocation import list_allocations
from prunekit.at_init import DensityTable, prune_at_init
from prunekit.criteria import Criterion, create_criterion, list_methods, register_criterion
from prunekit.criteria.gradient import MovementTracker
from prunekit.data import DatasetBundle, create_dataset, list_datasets
from prunekit.export import load_compressed, load_compressed_into, save_compressed
from prunekit.masks import MaskEnforcer, MaskMismatchError, MaskSet
from prunekit.models import create_model, list_models
from prunekit.pqi import SAPSchedule, pq_index, pq_index_report, sap_prune_count
from prunekit.prune import compute_masks, prune, pruning_plan
from prunekit.report import SparsityReport, sparsity_report
from prunekit.schedules import create_schedule, list_schedules
from prunekit.scores import ElementwiseScores, Scores, TensorScores
from prunekit.sparse_training import GraNet, RigL
from prunekit.targets import Targets, select_targets
from prunekit.training import Trainer

__version__ = "0.1.0"

__all__ = [
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
    "create_criterion",
    "create_model",
    "list_allocations",
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
