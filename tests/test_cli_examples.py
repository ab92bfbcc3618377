"""Every example config in examples/configs runs at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.experiments.config import load_config
from prunekit.experiments.runner import run_dir
from prunekit.experiments.sweep import expand

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
TINY = [
    "train.epochs=1",
    "train.batch_size=64",
    "retrain.epochs=0.5",
    "data.kwargs.num_samples=400",
]


def _tiny(path: Path, tmp_path: Path) -> list[str]:
    cfg = load_config(path)
    sets = [s for s in TINY if not (s.startswith("data.kwargs") and cfg.data.name != "mnist1d")]
    if cfg.model.name == "mlp":
        sets.append("model.kwargs.hidden=[16]")
    if cfg.model.name == "cnn1d":
        sets.append("model.kwargs.channels=4")
    if cfg.model.name == "gpt":
        sets.append("model.kwargs={n_layer: 1, n_head: 2, n_embd: 16}")
    if cfg.data.name == "text":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("pack my box with five dozen liquor jugs. " * 40)
        sets += [f"data.kwargs.path={corpus}", "data.kwargs.block_size=16", "train.epochs=0.2"]
    if cfg.prune.gmp_frequency is not None:
        sets.append("prune.gmp_frequency=2")
    sets.append(f"output={tmp_path / 'out'}")
    if cfg.dense_checkpoint is not None:
        # train the dense model it needs with the same architecture
        dense = load_config(path, [*sets, "dense_checkpoint=null", "prune.rewind=none"])
        from prunekit.experiments.runner import dense_dir, train_dense

        train_dense(dense)
        sets.append(f"dense_checkpoint={dense_dir(dense) / 'model.safetensors'}")
    return sets


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    expected = {"one_shot", "imp", "imp_lr_rewind", "bimp", "gmp", "rigl", "at_init", "sweep"}
    expected |= {"soups", "sfw", "sap"}
    assert expected | {"gpt_text", "finetune_checkpoint"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_tiny(path, tmp_path):
    sets = _tiny(path, tmp_path)
    args = [a for s in sets for a in ("--set", s)]
    cfg = load_config(path, sets)
    if cfg.sweep.sparsities or cfg.sweep.methods:
        sets += ["sweep.seeds=[0]", "sweep.sparsities=[0.9]"]
        args = [a for s in sets for a in ("--set", s)]
        assert main(["sweep", str(path), "--workers", "1", "--no-report", *args]) == 0
        for arm in expand(load_config(path, sets)):
            assert (run_dir(arm.config) / "result.json").is_file()
            _assert_reloads(run_dir(arm.config))
    else:
        assert main(["run", str(path), "--quiet", *args]) == 0
        assert (run_dir(cfg) / "result.json").is_file()
        _assert_reloads(run_dir(cfg))


def _assert_reloads(directory: Path) -> None:
    """load_run rebuilds the runner's final model: the same output bit for bit, the same
    masks (pruned weights exactly zero) and metrics."""
    run = prunekit.load_run(directory)
    x, expected = run.reference
    device = run.reference_device  # the runner's device (CUDA when present): same kernels
    with torch.no_grad():
        assert torch.equal(run.model.to(device)(x.to(device)).cpu(), expected)
    run.model.cpu()
    assert run.matches_reference()
    assert run.metrics == json.loads((directory / "result.json").read_text())
    assert abs(run.masks.sparsity - run.metrics["sparsity"]) < 1e-12
    state = run.model.state_dict()
    for name in run.masks:
        assert not state[name][~run.masks[name]].any()
