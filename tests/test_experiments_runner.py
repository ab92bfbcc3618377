"""The resumable runner: outputs of a run, skip when finished, equality with the recipes."""

from __future__ import annotations

import json

import torch

from prunekit.core.masks import MaskSet
from prunekit.experiments.config import resolve
from prunekit.experiments.runner import build_data, build_model, run_dir, run_experiment
from prunekit.experiments.store import ResultsStore
from prunekit.export import load_compressed
from prunekit.training import PruneSpec, TrainSpec, run_one_shot


def tiny(tmp_path, **prune) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1, "checkpoint_every": 5},
        "prune": {"sparsity": 0.8, **prune},
        "retrain": {"epochs": 0.5, "schedule": "llr"},
        "output": str(tmp_path / "out"),
    }


def test_run_writes_every_output_and_matches_recipe(tmp_path):
    cfg = resolve(tiny(tmp_path))
    result = run_experiment(cfg, quiet=True)
    root = run_dir(cfg)
    for name in (
        "config.yaml",
        "log.txt",
        "result.json",
        "phase_1/masks.safetensors",
        "phase_1/model.safetensors",
        "final/model.compressed.safetensors",
        "final/masks.safetensors",
        "final/metrics.json",
    ):
        assert (root / name).is_file(), name
    assert not (root / "phase_1" / "ckpt").exists()  # checkpoints removed once a stage is done
    dense = next((tmp_path / "out" / "dense").iterdir())
    assert (dense / "model.safetensors").is_file() and (dense / "init.safetensors").is_file()

    state = load_compressed(root / "final" / "model.compressed.safetensors")
    masks = MaskSet.load(root / "final" / "masks.safetensors")
    assert abs(masks.sparsity - 0.8) < 1e-3
    for name, mask in masks.items():
        assert torch.equal(state[name] != 0, mask) or bool((state[name][~mask] == 0).all())
    costs = result["costs"]
    assert costs["nonzero_macs"] < costs["dense_macs"]
    assert costs["speedup"] == costs["dense_macs"] / costs["nonzero_macs"]
    assert result["files"]["compressed_bytes"] < result["files"]["dense_bytes"]
    assert json.loads((root / "result.json").read_text())["final"] == result["final"]

    # the staged runner reproduces the in-memory recipe exactly
    data = build_data(cfg)
    model = build_model(cfg, data)
    spec = TrainSpec(epochs=1, batch_size=64, lr=0.05, lr_schedule="cosine", seed=0)
    ref = run_one_shot(
        model, data, spec, PruneSpec(0.8), retrain_epochs=0.5, retrain_schedule="llr"
    )
    assert ref.final == result["final"]
    assert ref.dense == result["dense"]

    rows = ResultsStore(cfg.output).runs()
    assert [(r["run_id"], r["status"]) for r in rows] == [(root.name, "done")]
    assert rows[0]["metrics"]["final_test_top1"] == result["final"]["test_top1"]


def test_finished_run_is_not_run_again(tmp_path, capsys):
    cfg = resolve(tiny(tmp_path))
    first = run_experiment(cfg, quiet=True)
    stamp = (run_dir(cfg) / "result.json").stat().st_mtime_ns
    second = run_experiment(cfg)
    assert "already finished" in capsys.readouterr().out
    assert second == first
    assert (run_dir(cfg) / "result.json").stat().st_mtime_ns == stamp


def test_dense_model_shared_between_runs(tmp_path):
    a = resolve(tiny(tmp_path))
    b = resolve(tiny(tmp_path, allocation="lamp"))
    ra, rb = run_experiment(a, quiet=True), run_experiment(b, quiet=True)
    assert len(list((tmp_path / "out" / "dense").iterdir())) == 1
    assert ra["dense"] == rb["dense"]
    assert "reused" in (run_dir(b) / "log.txt").read_text()


def test_imp_weight_rewinding_and_gmp(tmp_path):
    imp = resolve(
        tiny(
            tmp_path, schedule="imp", phases=2, rewind="weights", rewind_iteration=3, sparsity=0.75
        )
    )
    result = run_experiment(imp, quiet=True)
    assert [p["retrain_schedule"] for p in result["phases"]] == ["rewind_weights"] * 2
    assert abs(result["phases"][0]["sparsity"] - 0.5) < 1e-3
    assert abs(result["sparsity"] - 0.75) < 1e-3
    assert any(p.name == "rewind_3.safetensors" for p in (tmp_path / "out" / "dense").rglob("*"))
    gmp = resolve(tiny(tmp_path, schedule="gmp", sparsity=0.6, gmp_frequency=2))
    result = run_experiment(gmp, quiet=True)
    assert abs(result["sparsity"] - 0.6) < 1e-3


def test_dense_checkpoint_from_plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    from prunekit.training.trainer import evaluate

    base = resolve(tiny(tmp_path))
    data = build_data(base)
    model = build_model(base, data)
    save_file({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "plain.st")
    cfg = resolve({**tiny(tmp_path), "dense_checkpoint": str(tmp_path / "plain.st")})
    result = run_experiment(cfg, quiet=True)
    assert result["iterations"]["dense"] == 0
    assert result["dense"]["test_top1"] == evaluate(model, data.test)["top1"]

    # a compressed sparse model works as a dense checkpoint too
    from prunekit.experiments.runner import read_state_dict

    final = run_dir(cfg) / "final" / "model.compressed.safetensors"
    state = read_state_dict(final)
    assert torch.equal(state["net.1.weight"], load_compressed(final)["net.1.weight"])


def test_schedule_errors_before_training(tmp_path):
    import pytest

    from prunekit.experiments.typed import ConfigError

    cfg = resolve(tiny(tmp_path, schedule="imp", rewind="weights", rewind_iteration=10_000))
    with pytest.raises(ConfigError, match="prune.rewind_iteration"):
        run_experiment(cfg, quiet=True)
    assert not (tmp_path / "out" / "dense").exists()


def test_data_driven_criterion_gets_calibration_batches(tmp_path):
    cfg = resolve(tiny(tmp_path, criterion="snip", allocation="global"))
    result = run_experiment(cfg, quiet=True)
    assert abs(result["sparsity"] - 0.8) < 1e-3
    assert set(result["pq_index"]["layers"]) == set(result["layer_sparsity"])


def test_language_model_run_counts_attention(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    cfg = resolve(
        {
            "name": "lm",
            "model": {"name": "gpt", "kwargs": {"n_layer": 1, "n_head": 2, "n_embd": 16}},
            "data": {"name": "text", "kwargs": {"path": str(corpus), "block_size": 16}},
            "train": {"epochs": 0.2, "batch_size": 16, "lr": 0.01, "optimizer": "adamw"},
            "prune": {"sparsity": 0.5, "allocation": "uniform"},
            "retrain": {"epochs": 0.1},
            "output": str(tmp_path / "out"),
        }
    )
    result = run_experiment(cfg, quiet=True)
    assert "test_perplexity" in result["final"]
    rows = {r["name"]: r for r in result["costs"]["layers"]}
    assert rows["attention"]["dense_macs"] == rows["attention"]["nonzero_macs"] > 0
    q = rows["blocks.0.attn.q_proj"]
    assert q["dense_macs"] == 16 * 16 * 16 and q["nonzero_macs"] == q["dense_macs"] // 2


def test_dynamic_sparse_and_at_init_schedules(tmp_path):
    import pytest

    from prunekit.experiments.typed import ConfigError

    rigl = resolve(
        tiny(tmp_path, schedule="rigl", allocation="erk", options={"delta_t": 5, "alpha": 0.3})
    )
    result = run_experiment(rigl, quiet=True)
    assert abs(result["sparsity"] - 0.8) < 0.01
    assert result["phases"][0]["retrain_schedule"] == "during_training"
    at_init = resolve(tiny(tmp_path, schedule="at_init", criterion="snip"))
    result = run_experiment(at_init, quiet=True)
    assert abs(result["sparsity"] - 0.8) < 1e-3
    assert result["iterations"]["dense"] == 0
    with pytest.raises(ConfigError, match=r"^prune.options.delta: unknown option.*delta_t"):
        resolve(tiny(tmp_path, schedule="rigl", options={"delta": 5}))
    with pytest.raises(ConfigError, match=r"^dense_checkpoint:"):
        resolve({**tiny(tmp_path, schedule="rigl"), "dense_checkpoint": "x.safetensors"})
