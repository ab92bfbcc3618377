"""Schedules soups, sfw and sap in configs: option validation, results, report rows, resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from prunekit.core.masks import MaskSet
from prunekit.experiments.config import ConfigError, resolve
from prunekit.experiments.report import aggregate, collect_results
from prunekit.experiments.runner import build_data, build_model, run_dir, run_experiment
from prunekit.experiments.sweep import expand
from prunekit.export import load_compressed
from prunekit.recipes import get_recipe
from prunekit.training.trainer import evaluate


def _recipe_options(schedule: str) -> list[str]:
    return get_recipe(schedule).option_names()


def tiny(tmp_path, schedule: str, options: dict | None = None, **prune) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1, "checkpoint_every": 5},
        "prune": {"sparsity": 0.8, "schedule": schedule, "options": options or {}, **prune},
        "retrain": {"epochs": 0.5, "schedule": "llr"},
        "output": str(tmp_path / "out"),
    }


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(data)
    return str(info.value)


def _saved_top1(cfg, root) -> float:
    """Test accuracy of the run's saved compressed model."""
    data = build_data(cfg)
    model = build_model(cfg, data)
    model.load_state_dict(load_compressed(root / "final" / "model.compressed.safetensors"))
    return evaluate(model, data.test, task=data.task)["top1"]


def test_options_are_validated_against_each_recipe(tmp_path):
    # options other keys set are not offered
    assert {"m", "vary", "merge", "values", "sparsities"} <= set(_recipe_options("soups"))
    assert not {"phases", "prune", "out_dir", "retrain_epochs"} & set(_recipe_options("soups"))
    assert {"compress", "levels", "sfw", "factorize"} <= set(_recipe_options("sfw"))
    assert not {"allocation", "retrain_schedule", "pretrained"} & set(_recipe_options("sfw"))
    assert {"rounds", "scope", "p", "q", "eta_r", "gamma", "beta"} == set(_recipe_options("sap"))

    for schedule in ("soups", "sfw", "sap"):
        msg = _error(tiny(tmp_path, schedule, {"bogus": 1}))
        assert msg.startswith("prune.options.bogus: unknown option of schedule")
        assert repr(schedule) in msg and "allowed:" in msg
    msg = _error(tiny(tmp_path, "sfw", {"sfw": {"constraint": "l1", "radiuss": 3}}))
    assert msg.startswith("prune.options.sfw.radiuss: unknown SFWSpec field") and "tau" in msg
    assert _error(tiny(tmp_path, "sfw", {"sfw": 3})).startswith("prune.options.sfw:")
    msg = _error(tiny(tmp_path, "soups", criterion="snip"))
    assert msg.startswith("prune.criterion:") and "soups" in msg
    bad = tiny(tmp_path, "sfw")
    bad["dense_checkpoint"] = "model.safetensors"
    assert _error(bad).startswith("dense_checkpoint:")
    resolve(tiny(tmp_path, "sfw", {"sfw": None, "levels": [0.5]}))  # the baseline is valid


def test_soups_run_reports_the_soup_and_resumes(tmp_path):
    cfg = resolve(tiny(tmp_path, "soups", {"m": 2, "merge": "uniform"}, phases=1))
    result = run_experiment(cfg, quiet=True)
    root = run_dir(cfg)
    phase = result["phases"][-1]
    assert len(phase["ingredients"]) == 2 and phase["merge"] == "uniform"
    # the method's accuracy is the soup's, and the saved model is that soup
    assert result["final"]["test_top1"] == phase["uniform"]["test_top1"]
    assert _saved_top1(cfg, root) == pytest.approx(result["final"]["test_top1"])
    assert abs(MaskSet.load(root / "final" / "masks.safetensors").sparsity - 0.8) < 1e-3
    assert result["dense"] and result["dense_dir"]  # the shared dense model was pruned
    assert result["iterations"]["retrain"] == phase["retrain_iterations"] > 0

    # finished: a rerun does nothing; an interrupted run after the recipe skips the recipe
    assert run_experiment(cfg, quiet=True) == result
    (root / "result.json").unlink()
    shutil.rmtree(root / "final")
    again = run_experiment(cfg, quiet=True)
    assert again["final"] == result["final"] and again["phases"] == result["phases"]
    # killed inside the recipe: finished ingredients are loaded, not retrained
    for path in (root / "result.json", root / "recipe" / "stage.json"):
        path.unlink()
    shutil.rmtree(root / "final")
    resumed = run_experiment(cfg, quiet=True)
    assert resumed["phases"][-1]["resumed"] == [0, 1]
    assert resumed["final"] == result["final"]
    rows = aggregate(collect_results(tmp_path / "out"))
    row = next(r for r in rows if r.method != "dense")
    assert row.accuracy == result["final"]["test_top1"] and row.sparsity == 0.8


def test_sfw_reports_every_level(tmp_path):
    data = tiny(tmp_path, "sfw", {"levels": [0.5, 0.8], "sfw": {"k_fraction": 0.1}})
    data["retrain"]["epochs"] = 0
    cfg = resolve(data)
    result = run_experiment(cfg, quiet=True)
    root = run_dir(cfg)
    assert [p["target_sparsity"] for p in result["phases"]] == [0.5, 0.8]
    assert result["dense"] == {} and result["trained"]  # no dense baseline: SFW trains
    assert result["max_norm_ratio"] <= 1.0 + 1e-4  # stayed feasible
    # the saved model is the last level, compressed as the recipe measured it
    last = result["phases"][-1]
    assert result["final"] == last["pruned"]
    assert abs(result["sparsity"] - 0.8) < 1e-3
    assert _saved_top1(cfg, root) == pytest.approx(last["pruned"]["test_top1"])
    rows = [r for r in aggregate(collect_results(tmp_path / "out")) if r.method != "dense"]
    assert [r.sparsity for r in rows] == [0.5, 0.8]
    assert [r.accuracy for r in rows] == [p["pruned"]["test_top1"] for p in result["phases"]]
    # costs belong to the saved (last-level) model only
    assert rows[1].compression > 1.0 and math.isnan(rows[0].params)
    assert (root / "train" / "stage.json").is_file()
    assert not (root / "train" / "ckpt").exists()  # the training checkpoint is removed


def test_sfw_option_errors_name_the_key(tmp_path):
    msg = _error(tiny(tmp_path, "sfw", {"levels": [0.5, 1.5]}))
    assert msg.startswith("prune.options.levels: expected values in [0, 1)") and "1.5" in msg
    msg = _error(tiny(tmp_path, "sfw", {"compress": "svd"}))
    assert msg.startswith("prune.options.compress: expected one of magnitude, filters, low_rank")
    msg = _error(tiny(tmp_path, "sfw", {"compress": "low_rank", "levels": [0.0]}))
    assert msg.startswith("prune.options.levels: expected rank fractions in (0, 1]")
    assert _error(tiny(tmp_path, "sfw", {"levels": 0.5})).startswith("prune.options.levels:")


def test_sfw_cli_saves_the_retrained_level_and_matches_the_api(tmp_path):
    from safetensors.torch import load_file

    from prunekit.experiments.runner import train_spec
    from prunekit.training import SFWSpec, run_sfw

    data = tiny(tmp_path, "sfw", {"levels": [0.5, 0.8], "sfw": {"k_fraction": 0.1}})
    cfg = resolve(data)
    result = run_experiment(cfg, quiet=True)
    root = run_dir(cfg)
    last = result["phases"][-1]
    assert last["retrain_iterations"] > 0 and result["final"] == last["retrained"]
    # the saved model is the retrained last level, the one the result reports
    assert _saved_top1(cfg, root) == pytest.approx(last["retrained"]["test_top1"])

    # the Python API with the same settings runs the same stages: same weights, same levels
    bundle = build_data(cfg)
    model = build_model(cfg, bundle)
    spec = SFWSpec(k_fraction=0.1, targets=cfg.prune.targets.build())
    api = run_sfw(model, bundle, train_spec(cfg), spec, levels=[0.5, 0.8],
                  allocation=cfg.prune.allocation, retrain_epochs=cfg.retrain.epochs,
                  retrain_schedule=cfg.retrain.schedule)  # fmt: skip
    trained = load_file(str(root / "train" / "model.safetensors"))
    assert all(torch.equal(v.cpu(), trained[k]) for k, v in model.state_dict().items())
    assert api.to_dict()["phases"] == result["phases"]
    assert api.config["max_norm_ratio"] == result["max_norm_ratio"]


def test_sap_final_round(tmp_path):
    cfg = resolve(tiny(tmp_path, "sap", {"rounds": 2}))
    result = run_experiment(cfg, quiet=True)
    assert len(result["phases"]) == 2 and len(result["details"]["rounds"]) == 2
    assert result["final"] == result["phases"][-1]["retrained"]
    assert result["sparsity"] == pytest.approx(result["phases"][-1]["sparsity"])
    assert result["target_sparsity"] == round(result["sparsity"], 3)
    assert 0.0 < result["sparsity"] < 1.0
    assert _saved_top1(cfg, run_dir(cfg)) == pytest.approx(result["final"]["test_top1"])
    assert json.loads((run_dir(cfg) / "result.json").read_text())["final"] == result["final"]


def test_sweep_runs_sparsity_free_schedules_once_per_seed(tmp_path):
    data = tiny(tmp_path, "one_shot")
    data["sweep"] = {
        "sparsities": [0.5, 0.8],
        "seeds": [0, 1],
        "methods": {
            "lamp": {"prune.allocation": "lamp"},
            "sap": {"prune.schedule": "sap"},
            "sfw": {"prune.schedule": "sfw"},  # one level per arm: the arm's sparsity
            "sfw_levels": {"prune.schedule": "sfw", "prune.options": {"levels": [0.5, 0.9]}},
        },
    }
    arms = expand(resolve(data))
    count = {m: sum(a.method == m for a in arms) for m in data["sweep"]["methods"]}
    assert count == {"lamp": 4, "sap": 2, "sfw": 4, "sfw_levels": 2}
    assert {a.seed for a in arms if a.method == "sap"} == {0, 1}


def test_sap_resumes_at_a_round_boundary_and_matches_the_api(tmp_path):
    from prunekit.experiments.runner import train_spec
    from prunekit.recipes import sap

    cfg = resolve(tiny(tmp_path, "sap", {"rounds": 2}))
    result = run_experiment(cfg, quiet=True)
    root = run_dir(cfg)
    final = load_compressed(root / "final" / "model.compressed.safetensors")
    assert sorted(p.name for p in root.glob("round_*")) == ["round_1", "round_2"]
    assert not (root / "round_2" / "ckpt").exists()  # checkpoints removed once a round is done
    # interrupted after round 1: round 1 is loaded back, round 2 runs again, same weights
    (root / "result.json").unlink()
    shutil.rmtree(root / "final")
    shutil.rmtree(root / "round_2")
    again = run_experiment(cfg, quiet=True)
    assert again["phases"] == result["phases"] and again["details"] == result["details"]
    resumed = load_compressed(root / "final" / "model.compressed.safetensors")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    # the Python API with the same settings runs the same stages in memory
    data = build_data(cfg)
    model = build_model(cfg, data)
    api = sap(model, data, train_spec(cfg), rounds=2, retrain_epochs=0.5, retrain_schedule="llr")
    api.masks.finalize(model)
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    assert api.details == result["details"] and api.final == result["final"]
    assert result["iterations"] == {
        "dense": api.dense_iterations,
        "retrain": api.retrain_iterations,
    }
