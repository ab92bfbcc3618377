"""Training engine: Trainer, LR and retraining schedules, prune-retrain recipes, controls."""

from __future__ import annotations

from prunekit.recipes.methods.at_init import at_init as run_at_init
from prunekit.recipes.methods.dst import granet as run_granet
from prunekit.recipes.methods.dst import rigl as run_rigl
from prunekit.recipes.methods.sap import sap as run_sap
from prunekit.recipes.methods.sfw import (
    CompressionResult,
    FrankWolfeCallback,
    SFWSpec,
    make_sfw_optimizer,
)
from prunekit.recipes.methods.sfw import sfw as run_sfw
from prunekit.recipes.methods.soups import SoupPhase, TrainerRetrain, run_soups
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
from prunekit.training.recipes import (
    ExperimentResult,
    GMPCallback,
    PhaseResult,
    PruneSpec,
    TrainSpec,
    pruning_norm_change,
    run_bimp,
    run_dense,
    run_gmp,
    run_imp,
    run_one_shot,
    run_scratch,
    run_sparse_training,
)
from prunekit.training.trainer import Callback, FitResult, Trainer, evaluate, make_optimizer

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
