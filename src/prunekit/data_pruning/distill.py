"""Training on the kept subset, optionally distilled from a teacher (Ben-Baruch et al. 2025).

Loss: ``(1 - alpha) CE(z_s, y) + alpha tau^2 KL(p_t^tau || p_s^tau)`` with ``p^tau =
softmax(z / tau)``; the teacher sees the same (augmented) batch as the student, in eval mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.training.trainer import Trainer

__all__ = ["BUDGETS", "DistillTrainer", "kd_loss", "subset_iterations"]

BUDGETS = ("epochs", "iterations")


def _check_kd(alpha: float, tau: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
        raise ValueError(f"tau: expected a positive number, got {tau!r}")


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, tau: float
) -> Tensor:
    """``(1 - alpha) CE + alpha tau^2 KL(p_t^tau || p_s^tau)``, both terms batch means."""
    _check_kd(alpha, tau)
    s = student_logits.float()
    ce = F.cross_entropy(s, targets)
    if alpha == 0:
        return ce
    kl = F.kl_div(
        F.log_softmax(s / tau, dim=-1),
        F.log_softmax(teacher_logits.float() / tau, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * ce + alpha * tau**2 * kl


class DistillTrainer(Trainer):
    """A :class:`Trainer` whose training loss is :func:`kd_loss` against ``teacher``.

    The teacher is frozen and kept in eval mode on the Trainer's device; it is not part of the
    checkpoints (resuming needs the same teacher). Evaluation stays plain cross-entropy.
    """

    def __init__(
        self, model: nn.Module, train_data: Any, *, teacher: nn.Module, alpha: float,
        tau: float, **kwargs: Any,
    ) -> None:  # fmt: skip
        _check_kd(alpha, tau)
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher: expected an nn.Module, got {type(teacher).__name__}")
        if kwargs.get("loss_fn") is not None:
            raise ValueError("loss_fn: the DistillTrainer's loss is kd_loss; leave loss_fn out")
        if kwargs.get("task", "classification") != "classification":
            raise ValueError(
                f"task: distillation supports 'classification', got {kwargs['task']!r}"
            )
        super().__init__(model, train_data, **kwargs)
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.tau = float(tau)
        self._inputs: Tensor | None = None

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        self._inputs = x
        try:
            return super().train_step(x, y)
        finally:
            self._inputs = None

    def compute_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self._inputs is None or self.alpha == 0:
            return super().compute_loss(outputs, targets)
        with torch.no_grad():
            teacher_logits = self.teacher(self._inputs)
        return kd_loss(outputs, teacher_logits, targets, self.alpha, self.tau)


def subset_iterations(budget: str, kept: int, full: int, batch_size: int, epochs: float) -> int:
    """Steps of the subset training: ``epochs`` epochs over the ``kept`` examples (``epochs``
    budget) or as many steps as ``epochs`` epochs over all ``full`` examples (``iterations``)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {', '.join(BUDGETS)}, got {budget!r}")
    n = kept if budget == "epochs" else full
    return max(1, int(round(epochs * max(1, math.ceil(n / batch_size)))))
