"""Experiment configs: typed validation with key paths, overrides, hashing."""

from __future__ import annotations

import pytest

from prunekit.experiments.config import (
    ConfigError,
    config_hash,
    dense_hash,
    load_config,
    parse_overrides,
    resolve,
)
from prunekit.experiments.sweep import expand


def _error(data, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(data, overrides)
    return str(info.value)


def test_defaults_resolve():
    cfg = resolve({})
    assert cfg.prune.schedule == "one_shot" and cfg.retrain.schedule == "llr"


def test_unknown_key_names_path_and_allowed_keys():
    msg = _error({"prune": {"sparsty": 0.5}})
    assert msg.startswith("prune.sparsty: unknown key")
    assert "sparsity" in msg and "allocation" in msg


def test_bad_choices_name_key_and_allowed_values():
    msg = _error({"prune": {"allocation": "lampp"}})
    assert msg.startswith("prune.allocation:") and "lamp" in msg and "global" in msg
    msg = _error({"prune": {"criterion": "magnitud"}})
    assert msg.startswith("prune.criterion:") and "magnitude" in msg
    msg = _error({"prune": {"schedule": "oneshot"}})
    assert msg.startswith("prune.schedule:") and "'one_shot'" in msg and "'bimp'" in msg
    msg = _error({"retrain": {"schedule": "cosine"}})
    assert msg.startswith("retrain.schedule:") and "allr" in msg
    assert _error({"model": {"name": "resnet21"}}).startswith("model.name:")
    assert _error({"data": {"name": "imagenet"}}).startswith("data.name:")
    assert _error({"train": {"lr_schedule": "exp"}}).startswith("train.lr_schedule:")
    assert _error({"tracker": "tensorboard"}).startswith("tracker:")


def test_bad_values_name_key():
    assert _error({"prune": {"sparsity": 1.5}}).startswith("prune.sparsity:")
    assert _error({"train": {"epochs": "ten"}}).startswith("train.epochs:")
    assert _error({"train": {"batch_size": 0}}).startswith("train.batch_size:")
    assert _error({"prune": {"targets": {"module_types": ["Linearr"]}}}).startswith(
        "prune.targets.module_types[0]:"
    )
    assert _error({"sweep": {"sparsities": [0.5, 1.0]}}).startswith("sweep.sparsities[1]:")
    assert "N:M" in _error({"prune": {"allocation": "2-4"}})
    assert resolve({"prune": {"allocation": "2:4"}}).prune.allocation == "2:4"


def test_overrides_parse_yaml_values():
    pairs = parse_overrides(["train.epochs=3", "model.kwargs.hidden=[8, 4]", "name=abc"])
    assert pairs == [("train.epochs", 3), ("model.kwargs.hidden", [8, 4]), ("name", "abc")]
    cfg = resolve({}, pairs)
    assert cfg.train.epochs == 3.0 and cfg.model.kwargs["hidden"] == [8, 4]
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])
    assert _error({}, [("prune.sparsity", "x")]).startswith("prune.sparsity:")


def test_load_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prune:\n  sparsity: 0.8\n  allocation: lamp\n")
    cfg = load_config(path, ["seed=3"])
    assert cfg.prune.sparsity == 0.8 and cfg.prune.allocation == "lamp" and cfg.seed == 3
    path.write_text("prune: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_hash_ignores_output_and_reporting_keys():
    a = resolve({"output": "a", "tracker": "none", "train": {"progress": True}})
    b = resolve({"output": "b", "train": {"threads": 1, "checkpoint_every": 7}})
    assert config_hash(a) == config_hash(b)
    c = resolve({"prune": {"sparsity": 0.5}})
    assert config_hash(a) != config_hash(c)
    # the dense model does not depend on the pruning recipe
    assert dense_hash(a) == dense_hash(c)
    assert dense_hash(a) != dense_hash(resolve({"seed": 1}))


def test_rewind_weights_needs_dense_training():
    msg = _error({"dense_checkpoint": "x.safetensors", "prune": {"rewind": "weights"}})
    assert msg.startswith("prune.rewind:")


def test_sweep_expands_grid_and_validates_every_arm():
    cfg = resolve(
        {
            "sweep": {
                "sparsities": [0.5, 0.9],
                "seeds": [0, 1],
                "methods": {"g": {"prune.allocation": "global"}, "b": {"prune.schedule": "bimp"}},
            }
        }
    )
    arms = expand(cfg)
    assert len(arms) == 8
    assert {(a.method, a.sparsity, a.seed) for a in arms} == {
        (m, s, seed) for m in "gb" for s in (0.5, 0.9) for seed in (0, 1)
    }
    assert all(a.config.method == a.method for a in arms)
    bad = resolve({"sweep": {"methods": {"lamp": {"prune.allocation": "lampp"}}}})
    with pytest.raises(ConfigError, match=r"^sweep.methods.lamp: prune.allocation:"):
        expand(bad)
