"""RigL, GraNet and pruning at initialisation: `prunekit run` and the Python API run the same
stage, so they give bitwise-identical weights and the same report details."""

from __future__ import annotations

import pytest
import torch

import prunekit.recipes as recipes
from prunekit.experiments.config import resolve
from prunekit.experiments.runner import build_data, build_model, run_dir, run_experiment, train_spec
from prunekit.export import load_compressed


def _config(tmp_path, schedule: str, **prune) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "digits", "calibration_batches": 2, "calibration_batch_size": 32},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "lr_schedule": "cosine",
                  "threads": 1, "checkpoint_every": 5},
        "prune": {"sparsity": 0.8, "schedule": schedule, **prune},
        "output": str(tmp_path / "out"),
    }  # fmt: skip


CASES = {
    "rigl": (
        {"allocation": "erk", "options": {"delta_t": 3, "alpha": 0.3}},
        lambda m, d, t: recipes.rigl(m, d, t, sparsity=0.8, delta_t=3, alpha=0.3),
    ),
    "granet": (
        {"allocation": "erk", "options": {"delta_t": 2, "initial_sparsity": 0.3}},
        lambda m, d, t: recipes.granet(m, d, t, sparsity=0.8, delta_t=2, initial_sparsity=0.3),
    ),
    "at_init": (
        {"criterion": "snip"},
        lambda m, d, t: recipes.at_init(
            m, d, t, "snip", 0.8, num_batches=2, criterion_batch_size=32
        ),
    ),
}


@pytest.mark.parametrize("schedule", list(CASES))
def test_config_run_equals_the_api(tmp_path, schedule):
    prune, api = CASES[schedule]
    cfg = resolve(_config(tmp_path, schedule, **prune))
    result = run_experiment(cfg, quiet=True)
    saved = load_compressed(run_dir(cfg) / "final" / "model.compressed.safetensors")
    assert not (run_dir(cfg) / "phase_1" / "ckpt").exists()  # removed once the stage is done
    data = build_data(cfg)
    model = build_model(cfg, data)
    out = api(model, data, train_spec(cfg))
    out.masks.finalize(model)
    state = model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)
    assert result["final"] == out.final and result["details"] == out.details
    assert result["iterations"] == {
        "dense": out.dense_iterations,
        "retrain": out.retrain_iterations,
    }
    assert abs(result["sparsity"] - 0.8) < 0.01
