"""The example configs shrunk to test size: the same overrides for every test that runs them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from prunekit.experiments.config import ExperimentConfig, load_config
from prunekit.experiments.runner import build_data, build_model

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
CORPUS = "pack my box with five dozen liquor jugs. " * 40


def tiny_sets(path: Path, work: Path) -> list[str]:
    """``--set`` overrides that shrink the example ``path`` to a few seconds on one thread.

    They only shrink (epochs, sizes, counts), never switch a feature on or off: a retraining
    length of 0 stays 0, the recipe, criterion, allocation and schedules stay the example's.
    ``work`` holds the files some examples need (a text corpus, a dense checkpoint).
    """
    cfg = load_config(path)
    sets = ["train.threads=1", "train.batch_size=32", "train.epochs=1"]
    if cfg.retrain.epochs is None or cfg.retrain.epochs > 0:
        sets.append("retrain.epochs=0.5")
    if cfg.data.name == "mnist1d":
        sets.append("data.kwargs.num_samples=200")
    if cfg.model.name == "mlp":
        sets.append("model.kwargs.hidden=[32, 16]")
    if cfg.model.name == "cnn1d":
        sets.append("model.kwargs.channels=4")
    if cfg.model.name == "gpt":
        sets.append("model.kwargs={n_layer: 1, n_head: 2, n_embd: 16}")
    if cfg.data.name == "text":
        corpus = work / "corpus.txt"
        work.mkdir(parents=True, exist_ok=True)
        corpus.write_text(CORPUS)
        sets += [f"data.kwargs.path={corpus}", "data.kwargs.block_size=16", "train.epochs=0.2"]
    if cfg.prune.phases > 2:
        sets.append("prune.phases=2")
    if cfg.prune.gmp_frequency is not None:
        sets.append("prune.gmp_frequency=2")
    options = cfg.prune.options
    if "rounds" in options:  # SAP
        sets.append("prune.options.rounds=2")
    if "m" in options:  # soups: ingredients per phase
        sets.append("prune.options.m=2")
    if "delta_t" in options:  # RigL: a few updates in the short run
        sets.append("prune.options.delta_t=2")
    if cfg.data_prune.enabled:
        sets.append("data_prune.options={runs: 1, epochs: 1}")
    sets.append(f"output={work / 'out'}")
    if cfg.dense_checkpoint is not None:
        sets.append(f"dense_checkpoint={dense_checkpoint(path, sets, work)}")
    return sets


def dense_checkpoint(path: Path, sets: list[str], work: Path) -> Path:
    """A "trained" dense state_dict for examples that start from one: the architecture of the
    config initialised with another seed (any weights of the right shape will do)."""
    file = work / "dense_checkpoint.safetensors"
    work.mkdir(parents=True, exist_ok=True)
    if not file.is_file():
        cfg = load_config(path, [*sets, "dense_checkpoint=null"])
        model = build_model(cfg, build_data(cfg), seed=cfg.seed + 123)
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(file))
    return file


def tiny_config(path: Path, work: Path) -> ExperimentConfig:
    """The shrunk config of the example ``path`` (a sweep: its last arm, BIMP)."""
    sets = tiny_sets(path, work)
    cfg = load_config(path, sets)
    if cfg.sweep.sparsities or cfg.sweep.methods:
        from prunekit.experiments.sweep import expand

        return expand(cfg)[-1].config
    return cfg


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ (or exist on one side only); empty when bitwise equal."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or not torch.equal(a[n], b[n])]
