"""Selection (exact, deterministic, class-balanced, auto rule) and the distillation loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data import TensorData
from prunekit.data_pruning import DistillTrainer, kd_loss, select, subset_iterations
from prunekit.data_pruning.selection import resolve_keep
from prunekit.training import Callback

SCORES = torch.tensor([0.5, 0.9, 0.1, 0.9, 0.3, 0.7, 0.1, 0.2, 0.9, 0.6])
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


def test_hard_and_easy_keep_the_extremes_with_ties_broken_by_index():
    assert select(SCORES, 0.2, "hard").indices.tolist() == [1, 3]  # 0.9 x3: lowest indices
    assert select(SCORES, 0.3, "hard").indices.tolist() == [1, 3, 8]
    assert select(SCORES, 0.2, "easy").indices.tolist() == [2, 6]
    assert select(SCORES, 0.3, "easy").indices.tolist() == [2, 6, 7]
    assert select(torch.ones(6), 0.5, "hard").indices.tolist() == [0, 1, 2]
    assert select(torch.ones(6), 0.5, "easy").indices.tolist() == [0, 1, 2]
    assert select(SCORES, 1.0, "easy").indices.tolist() == list(range(10))
    assert select(SCORES, 0.01, "hard").indices.tolist() == [1]  # at least one example


def test_selection_is_deterministic():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (200,), generator=g).float()  # many ties
    labels = torch.randint(0, 4, (200,), generator=g)
    a = select(s, 0.37, "hard", labels=labels, class_balanced=True)
    b = select(s.clone(), 0.37, "hard", labels=labels.clone(), class_balanced=True)
    assert torch.equal(a.indices, b.indices) and len(a) == 74


def test_auto_keeps_hard_when_the_fraction_is_large_and_easy_when_small():
    assert resolve_keep("auto", 0.9) == "hard" and resolve_keep("auto", 0.5) == "hard"
    assert resolve_keep("auto", 0.3) == "easy"
    assert resolve_keep("auto", 0.6, auto_threshold=0.7) == "easy"
    assert select(SCORES, 0.2, "auto").keep == "easy"
    assert (
        select(SCORES, 0.7, "auto").indices.tolist() == select(SCORES, 0.7, "hard").indices.tolist()
    )


def test_class_balanced_keeps_each_class_share_by_score():
    # k = 5 of 10: class 0 (4 examples) gets 2, class 1 (6 examples) gets 3
    hard = select(SCORES, 0.5, "hard", labels=LABELS, class_balanced=True)
    assert hard.indices.tolist() == [1, 3, 5, 8, 9]
    easy = select(SCORES, 0.5, "easy", labels=LABELS, class_balanced=True)
    assert easy.indices.tolist() == [0, 2, 4, 6, 7]
    # largest remainder: k = 3 -> exact shares 1.2 and 1.8 -> 1 and 2
    assert select(SCORES, 0.3, "hard", labels=LABELS, class_balanced=True).indices.tolist() == [
        1,
        5,
        8,
    ]


def test_selection_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"fraction: expected a number in \(0, 1\]"):
        select(SCORES, 0.0)
    with pytest.raises(ValueError, match="keep: expected one of hard, easy, auto"):
        select(SCORES, 0.5, "middle")
    with pytest.raises(ValueError, match="labels: class_balanced selection needs the labels"):
        select(SCORES, 0.5, class_balanced=True)
    with pytest.raises(ValueError, match="scores: 1 NaN values"):
        select(torch.tensor([0.1, float("nan")]), 0.5)


def test_kd_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 3, 1, 1, 2])
    alpha, tau = 0.7, 3.0
    pt = torch.softmax(t / tau, 1)
    kl = (pt * (pt.log() - torch.log_softmax(s / tau, 1))).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(5), y].mean()
    want = (1 - alpha) * ce + alpha * tau**2 * kl
    assert kd_loss(s, t, y, alpha, tau).item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.equal(kd_loss(s, t, y, 0.0, tau), F.cross_entropy(s, y))
    with pytest.raises(ValueError, match="alpha: expected a number in"):
        kd_loss(s, t, y, 1.5, tau)
    with pytest.raises(ValueError, match="tau: expected a positive number"):
        kd_loss(s, t, y, 0.5, 0.0)


def test_distill_trainer_trains_on_the_kd_loss_of_each_batch():
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g))
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)

    class Losses(Callback):
        def __init__(self):
            self.seen = []

        def on_before_step(self, trainer, loss):
            self.seen.append(loss.item())

    cb = Losses()
    trainer = DistillTrainer(student, data, teacher=teacher, alpha=0.6, tau=2.0, iterations=1,
                             batch_size=8, callbacks=[cb], device="cpu")  # fmt: skip
    x, y = trainer.batch_at(0)
    want = kd_loss(student(x), teacher(x), y, 0.6, 2.0).item()
    trainer.fit()
    assert cb.seen == [pytest.approx(want, rel=1e-6)]
    assert all(not p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="loss_fn: the DistillTrainer's loss is kd_loss"):
        DistillTrainer(student, data, teacher=teacher, alpha=0.5, tau=2.0, iterations=1,
                       loss_fn=F.cross_entropy)  # fmt: skip


def test_budgets():
    # equal epochs: 3 epochs over 250 kept examples; equal iterations: 3 epochs over all 1000
    assert subset_iterations("epochs", 250, 1000, 100, 3) == 9
    assert subset_iterations("iterations", 250, 1000, 100, 3) == 30
    with pytest.raises(ValueError, match="budget: expected one of epochs, iterations"):
        subset_iterations("steps", 250, 1000, 100, 3)
