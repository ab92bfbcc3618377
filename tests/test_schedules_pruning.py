"""Every pruning schedule produces its documented sparsity trajectory exactly."""

from __future__ import annotations

import pytest

from prunekit.commands.list_cmd import registries
from prunekit.core.schedules import (
    BIMP,
    GMP,
    IMP,
    OneShot,
    create_schedule,
    list_schedules,
    split_budget,
)
from prunekit.experiments.config import accepted_names


def test_one_shot():
    s = OneShot(0.9)
    assert s.pruning_steps() == [1]
    assert [s.sparsity_at(j) for j in (0, 1, 5)] == [0.0, 0.9, 0.9]


def test_imp_trajectory_and_rate():
    s = IMP(0.875, 3)  # 1 - 0.125**(j/3): 0.5, 0.75, 0.875
    assert s.pruning_steps() == [1, 2, 3]
    assert s.sparsity_at(0) == 0.0
    assert s.targets() == [pytest.approx(0.5), pytest.approx(0.75), 0.875]
    assert s.rate == pytest.approx(0.5)
    s = IMP(0.9, 4)
    for j in range(5):
        assert s.sparsity_at(j) == pytest.approx(1 - 0.1 ** (j / 4))
    assert s.sparsity_at(4) == 0.9  # exact at the end


def test_imp_from_rate_matches_lottery_ticket_rounds():
    s = IMP.from_rate(1 - 0.8**5, rate=0.2)
    assert s.phases == 5
    assert s.rate == pytest.approx(0.2)


def test_bimp_budget_split_remainder_to_last():
    s = BIMP(0.9, 3, retrain_iterations=100)
    assert s.budgets() == [33, 33, 34]
    assert sum(s.budgets()) == 100
    assert s.targets() == IMP(0.9, 3).targets()
    assert split_budget(7, 7) == [1] * 7
    assert split_budget(5, 3) == [1, 1, 3]


def test_gmp_cubic_trajectory():
    s = GMP(0.9, start=10, end=50, frequency=10)
    assert s.pruning_steps() == [10, 20, 30, 40, 50]
    expected = [0.9 + (0.0 - 0.9) * (1 - k / 4) ** 3 for k in range(5)]
    assert s.targets() == [pytest.approx(e) for e in expected]
    assert s.targets()[0] == 0.0 and s.targets()[-1] == 0.9
    assert s.sparsity_at(9) == 0.0  # before start
    assert s.sparsity_at(25) == s.sparsity_at(20)  # holds between pruning steps
    assert s.sparsity_at(10_000) == 0.9
    s = GMP(0.8, start=0, end=35, frequency=10, initial_sparsity=0.2)  # end snaps to 30
    assert s.end == 30 and s.pruning_steps() == [0, 10, 20, 30]
    assert s.sparsity_at(10) == pytest.approx(0.8 + (0.2 - 0.8) * (2 / 3) ** 3)


def test_gmp_for_training_defaults():
    s = GMP.for_training(0.9, 1000)
    assert (s.start, s.end, s.frequency) == (100, 600, 10)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sparsity"):
        IMP(1.0, 3)
    with pytest.raises(ValueError, match="phases"):
        IMP(0.5, 0)
    with pytest.raises(ValueError, match="end"):
        GMP(0.9, 10, 5)
    with pytest.raises(ValueError, match="frequency"):
        GMP(0.9, 0, 5, frequency=10)
    with pytest.raises(ValueError, match="schedule"):
        create_schedule("granet")


def test_registry_and_list_command():
    assert list_schedules() == ["bimp", "gmp", "imp", "one_shot"]
    assert create_schedule("imp", sparsity=0.5, phases=2).targets()[-1] == 0.5
    sections = registries()
    # every schedule a config accepts, the pruning-schedule objects among them
    assert set(list_schedules()) <= set(sections["schedules"])
    assert set(sections["schedules"]) == set(accepted_names()["prune.schedule"])
    assert "allr" in sections["retraining"] and "mnist1d" in sections["datasets"]
