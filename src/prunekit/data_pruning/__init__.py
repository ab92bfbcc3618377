"""Data pruning: score every training example, keep a fraction, train on it (optionally with KD).

The same spine as weight pruning: a *score* per example (like a criterion; registry
:data:`DATA_SCORES`, ``prunekit list "data scores"``), a *selection* (keep fraction, hard / easy
/ auto, class-balanced) and a *recovery* (training on the kept subset, optionally distilled from
a teacher trained on all the data). Scores are cached as safetensors with the data set's
fingerprint. See ``docs/data_pruning.md``.
"""

from __future__ import annotations

from prunekit.data_pruning import forgetting as _forgetting  # noqa: F401  (registers the score)
from prunekit.data_pruning import scores as _scores  # noqa: F401  (registers the scores)
from prunekit.data_pruning.base import (
    DATA_SCORES,
    DataScore,
    ScoreContext,
    compute_scores,
    register_score,
    score_options,
)
from prunekit.data_pruning.cache import (
    FingerprintMismatch,
    load_scores,
    save_scores,
    scores_cached,
)
from prunekit.data_pruning.data import IndexView, fingerprint, labels_of
from prunekit.data_pruning.distill import BUDGETS, DistillTrainer, kd_loss, subset_iterations
from prunekit.data_pruning.forgetting import ForgettingCallback, ForgettingTracker
from prunekit.data_pruning.scores import el2n_scores, embeddings, per_example_grad_norms
from prunekit.data_pruning.selection import AUTO_THRESHOLD, KEEP_RULES, Selection, select

__all__ = [
    "AUTO_THRESHOLD",
    "BUDGETS",
    "DATA_SCORES",
    "DataScore",
    "DistillTrainer",
    "FingerprintMismatch",
    "ForgettingCallback",
    "ForgettingTracker",
    "IndexView",
    "KEEP_RULES",
    "ScoreContext",
    "Selection",
    "compute_scores",
    "el2n_scores",
    "embeddings",
    "fingerprint",
    "kd_loss",
    "labels_of",
    "list_sections",
    "load_scores",
    "per_example_grad_norms",
    "register_score",
    "save_scores",
    "score_options",
    "scores_cached",
    "select",
    "subset_iterations",
]


def list_sections() -> dict[str, dict[str, str]]:
    """``prunekit list`` sections of this package: name -> {entry: description}."""
    entries = {}
    for name, doc in DATA_SCORES.describe().items():
        entry = DATA_SCORES.get(name)
        entries[name] = f"[{entry.kind}{'' if entry.uses_labels else ', no labels'}] {doc}"
    return {"data scores": entries}
