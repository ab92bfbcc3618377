"""Typed configs from plain data: errors name the key path and the allowed values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from prunekit.experiments.typed import ConfigError, from_dict, set_path, to_dict


@dataclass
class Inner:
    method: Literal["magnitude", "random"] = "magnitude"
    sparsities: list[float] = field(default_factory=lambda: [0.5])


@dataclass
class Outer:
    name: str
    epochs: int = 3
    lr: float = 0.1
    seed: int | None = None
    prune: Inner = field(default_factory=Inner)


def test_round_trip():
    cfg = from_dict(Outer, {"name": "x", "lr": 1, "prune": {"sparsities": [0.5, 0.9]}})
    assert cfg.lr == 1.0 and cfg.prune.sparsities == [0.5, 0.9]
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"name": "x", "epoch": 3},
            r"epoch: unknown key; allowed keys: epochs, lr, name, prune, seed",
        ),
        (
            {"name": "x", "prune": {"method": "snap"}},
            r"prune.method: expected one of 'magnitude', 'random'",
        ),
        (
            {"name": "x", "prune": {"sparsities": [0.5, "a"]}},
            r"prune.sparsities\[1\]: expected a number",
        ),
        ({"name": "x", "epochs": 2.5}, r"epochs: expected an integer"),
        ({"name": "x", "prune": {"bogus": 1}}, r"prune.bogus: unknown key"),
        ({}, r"name: required key is missing"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_set_path():
    data = {"prune": {"method": "magnitude"}}
    set_path(data, "prune.method", "random")
    set_path(data, "train.epochs", 5)
    assert data == {"prune": {"method": "random"}, "train": {"epochs": 5}}
