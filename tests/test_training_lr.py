"""Each LR and retraining schedule at the start, the end of warm-up and the end, against its formula."""

from __future__ import annotations

import math

import pytest

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
    StepLR,
    allr_initial_lr,
    list_retrain_schedules,
    make_lr_schedule,
    make_retrain_schedule,
    warmup_length,
)

T_TRAIN = 200
T = 50  # retraining length; warm-up round(0.1 * 50) = 5
W = 5


def original() -> StepLR:
    return StepLR(0.1, T_TRAIN, milestones=(0.5, 0.75), gamma=0.1)


def test_training_schedules_formulas():
    s = StepLR(0.1, 200, milestones=(0.5, 0.75), gamma=0.1)
    assert s.milestones == [100, 150]
    assert s(0) == 0.1 and s(99) == 0.1
    assert s(100) == pytest.approx(0.01) and s(150) == pytest.approx(0.001)
    assert s(199) == pytest.approx(0.001)
    assert (s.eta_max, s.eta_min) == (0.1, pytest.approx(0.001))
    c = CosineLR(0.2, 100, lr_min=0.01)
    assert c(0) == pytest.approx(0.2)
    assert c(50) == pytest.approx(0.01 + 0.19 * 0.5)
    assert c(99) == pytest.approx(0.01 + 0.19 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    lin = LinearLR(0.3, 10)
    assert [lin(t) for t in (0, 5, 9)] == [
        pytest.approx(0.3),
        pytest.approx(0.15),
        pytest.approx(0.03),
    ]
    assert ConstantLR(0.05, 3).values() == [0.05] * 3
    assert make_lr_schedule("cosine", 0.1, 10).lr_at(0) == pytest.approx(0.1)


def test_out_of_range_and_bad_arguments():
    with pytest.raises(ValueError, match="t:"):
        LinearLR(0.1, 10)(10)
    with pytest.raises(ValueError, match="total"):
        LinearLR(0.1, 0)
    with pytest.raises(ValueError, match="lr_schedule"):
        make_lr_schedule("exp", 0.1, 10)
    with pytest.raises(ValueError, match="milestones"):
        StepLR(0.1, 10, milestones=(1.5,))
    with pytest.raises(ValueError, match="retrain_schedule"):
        make_retrain_schedule("nope", original(), 10)
    with pytest.raises(ValueError, match="norm_change"):
        make_retrain_schedule("allr", original(), 10)


def test_ft_is_constant_eta_min():
    ft = FT(original(), T)
    assert ft.warmup_iters == 0
    assert all(v == pytest.approx(0.001) for v in ft.values())


def test_lrw_replays_the_last_T_iterations():
    orig = original()
    lrw = LRW(orig, T)
    assert [lrw(t) for t in range(T)] == [orig(T_TRAIN - T + t) for t in range(T)]
    long = LRW(orig, 120)  # starts in the first plateau
    assert long(0) == orig(80) == 0.1 and long(119) == pytest.approx(0.001)


def _warmup(eta0: float, t: int) -> float:
    return eta0 * 0.5 * (1 - math.cos(math.pi * t / W))


@pytest.mark.parametrize("cls", [SLR, CLR, LLR])
def test_warmup_is_half_cosine_from_zero(cls):
    s = cls(original(), T)
    assert warmup_length(T) == W == s.warmup_iters
    assert s(0) == 0.0
    assert s(2) == pytest.approx(_warmup(0.1, 2))
    assert s(W - 1) == pytest.approx(_warmup(0.1, W - 1))


def test_slr_is_the_original_compressed():
    s = SLR(original(), T)
    # End of warm-up: the original's first LR; then its milestones at 50% / 75% of the main part.
    assert s(W) == pytest.approx(0.1)
    main = T - W  # 45 iterations carry the 200 original ones
    t_mid = W + math.ceil(0.5 * main)
    assert s(t_mid) == pytest.approx(original()(int((t_mid - W) / main * T_TRAIN)))
    assert s(T - 1) == pytest.approx(0.001)


def test_clr_cosine_from_eta_max_to_eta_min():
    s = CLR(original(), T)
    assert s(W) == pytest.approx(0.1)
    u = (T - 1 - W) / (T - W)
    assert s(T - 1) == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * u)))


def test_llr_linear_to_zero():
    s = LLR(original(), T)
    assert s(W) == pytest.approx(0.1)
    assert s(W + 9) == pytest.approx(0.1 * (1 - 9 / (T - W)))
    assert s(T - 1) == pytest.approx(0.1 / (T - W))


def test_allr_initial_lr_and_clipping():
    # eta_max * d / sqrt(s) inside the clip range.
    eta0 = allr_initial_lr(0.1, 0.2, 0.64, T, T_TRAIN)
    assert eta0 == pytest.approx(0.1 * 0.2 / 0.8)
    s = ALLR(original(), T, norm_change=0.2, pruned_fraction=0.64)
    assert s.eta0 == pytest.approx(0.025)
    assert s(0) == 0.0
    assert s(W - 1) == pytest.approx(_warmup(0.025, W - 1))
    assert s(W) == pytest.approx(0.025)
    assert s(T - 1) == pytest.approx(0.025 / (T - W))
    # Clipped below at (T / T_train) * eta_max and above at eta_max.
    assert ALLR(original(), T, 1e-6, 0.5).eta0 == pytest.approx(T / T_TRAIN * 0.1)
    assert ALLR(original(), T, 0.9, 0.01).eta0 == pytest.approx(0.1)
    assert make_retrain_schedule(
        "allr", original(), T, norm_change=0.2, pruned_fraction=0.64
    ).eta0 == pytest.approx(0.025)


def test_registry_lists_all_retraining_schedules():
    assert list_retrain_schedules() == ["allr", "clr", "ft", "llr", "lrw", "slr"]
