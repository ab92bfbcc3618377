"""Training engine: Trainer, LR and retraining schedules, prune-retrain recipes, controls."""

from __future__ import annotations

from prunekit.training.checkpoint import load_checkpoint, save_checkpoint
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

__all__ = [
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
