"""Training engine: Trainer, LR and retraining schedules, checkpoints, dynamic sparse training,
soup mechanics; the recipes' earlier names (``run_imp``, ``run_soups``, ...) load lazily."""

from __future__ import annotations

from typing import Any

from prunekit.training.checkpoint import load_checkpoint, save_checkpoint
from prunekit.training.controls import (
    count_flops,
    random_reinit,
    scratch_iterations,
    shuffle_masks,
)
from prunekit.training.dst import DSTCallback, GraNetCallback, RigLCallback
from prunekit.training.lr import (
    ALLR,
    CLR,
    FT,
    LLR,
    LRW,
    SLR,
    ConstantLR,
    CosineLR,
    LinearLR,
    LRSchedule,
    StepLR,
    allr_initial_lr,
    list_retrain_schedules,
    make_lr_schedule,
    make_retrain_schedule,
)
from prunekit.training.trainer import Callback, FitResult, Trainer, evaluate, make_optimizer

# The recipes (prunekit.recipes) build on this package; their earlier names here load lazily, so
# that importing the training engine never imports the recipes.
_RECIPES = {
    "ExperimentResult": ("prunekit.recipes.spec", "ExperimentResult"),
    "PhaseResult": ("prunekit.recipes.spec", "PhaseResult"),
    "PruneSpec": ("prunekit.recipes.spec", "PruneSpec"),
    "TrainSpec": ("prunekit.recipes.spec", "TrainSpec"),
    "GMPCallback": ("prunekit.recipes.methods.gmp", "GMPCallback"),
    "run_gmp": ("prunekit.recipes.methods.gmp", "gmp"),
    "run_one_shot": ("prunekit.recipes.methods.prune_retrain", "one_shot"),
    "run_imp": ("prunekit.recipes.methods.prune_retrain", "imp"),
    "run_bimp": ("prunekit.recipes.methods.prune_retrain", "bimp"),
    "pruning_norm_change": ("prunekit.recipes.methods.prune_retrain", "pruning_norm_change"),
    "run_at_init": ("prunekit.recipes.methods.at_init", "at_init"),
    "run_rigl": ("prunekit.recipes.methods.dst", "rigl"),
    "run_granet": ("prunekit.recipes.methods.dst", "granet"),
    "run_sap": ("prunekit.recipes.methods.sap", "sap"),
    "run_soups": ("prunekit.recipes.methods.soups", "run_soups"),
    "SoupPhase": ("prunekit.recipes.methods.soups", "SoupPhase"),
    "TrainerRetrain": ("prunekit.recipes.methods.soups", "TrainerRetrain"),
    "run_sfw": ("prunekit.recipes.methods.sfw", "sfw"),
    "SFWSpec": ("prunekit.recipes.methods.sfw", "SFWSpec"),
    "CompressionResult": ("prunekit.recipes.methods.sfw", "CompressionResult"),
    "FrankWolfeCallback": ("prunekit.recipes.methods.sfw", "FrankWolfeCallback"),
    "make_sfw_optimizer": ("prunekit.recipes.methods.sfw", "make_sfw_optimizer"),
    "run_dense": ("prunekit.recipes.controls", "run_dense"),
    "run_sparse_training": ("prunekit.recipes.controls", "run_sparse_training"),
    "run_scratch": ("prunekit.recipes.controls", "run_scratch"),
}


def __getattr__(name: str) -> Any:
    if name in _RECIPES:
        import importlib

        module, attr = _RECIPES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'prunekit.training' has no attribute {name!r}")


__all__ = [
    "DSTCallback",
    "GraNetCallback",
    "RigLCallback",
    "run_at_init",
    "run_granet",
    "run_rigl",
    "run_sap",
    "ExperimentResult",
    "GMPCallback",
    "PhaseResult",
    "PruneSpec",
    "TrainSpec",
    "count_flops",
    "pruning_norm_change",
    "random_reinit",
    "run_bimp",
    "run_dense",
    "run_gmp",
    "run_imp",
    "run_one_shot",
    "run_scratch",
    "run_sfw",
    "run_soups",
    "run_sparse_training",
    "CompressionResult",
    "FrankWolfeCallback",
    "SFWSpec",
    "SoupPhase",
    "TrainerRetrain",
    "make_sfw_optimizer",
    "scratch_iterations",
    "shuffle_masks",
    "ALLR",
    "CLR",
    "FT",
    "LLR",
    "LRW",
    "SLR",
    "Callback",
    "ConstantLR",
    "CosineLR",
    "FitResult",
    "LRSchedule",
    "LinearLR",
    "StepLR",
    "Trainer",
    "allr_initial_lr",
    "evaluate",
    "list_retrain_schedules",
    "load_checkpoint",
    "make_lr_schedule",
    "make_optimizer",
    "make_retrain_schedule",
    "save_checkpoint",
]
