"""The CLI and the Python API give the same run: bitwise-equal final weights, equal metrics.

Every example config (shrunk by ``_tiny_examples``) runs once through ``run_experiment`` (what
``prunekit run`` does) and once through the recipe's public Python function, with the settings
of the config written out here as keyword arguments, from the same initial model and data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from safetensors.torch import load_file
from torch import nn

import prunekit.recipes
from _tiny_examples import EXAMPLES, state_equal, tiny_config, tiny_sets
from prunekit import training
from prunekit.core.targets import Targets
from prunekit.experiments.config import ExperimentConfig, load_config
from prunekit.experiments.runner import build_data, build_model, run_dir, run_experiment
from prunekit.export import load_compressed
from prunekit.recipes import ExperimentResult, PruneSpec, TrainSpec, list_recipes
from prunekit.recipes.context import metrics_of


# ---------------------------------------------------------------------- config -> API arguments
def _train(cfg: ExperimentConfig) -> TrainSpec:
    t = cfg.train
    return TrainSpec(
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        lr_schedule=t.lr_schedule,
        optimizer=t.optimizer,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
        seed=cfg.seed,
        device=t.device,
    )


def _targets(cfg: ExperimentConfig) -> Targets:
    t = cfg.prune.targets
    kwargs: dict[str, Any] = {}
    if t.module_types is not None:
        kwargs["module_types"] = tuple(getattr(nn, name) for name in t.module_types)
    return Targets(
        include=tuple(t.include),
        exclude=tuple(t.exclude),
        keep_first=t.keep_first,
        keep_last=t.keep_last,
        **kwargs,
    )


def _prune(cfg: ExperimentConfig) -> PruneSpec:
    p = cfg.prune
    return PruneSpec(
        sparsity=p.sparsity,
        method=p.criterion,
        allocation=p.allocation,
        targets=_targets(cfg),
        min_keep=p.min_keep,
        criterion_options=p.criterion_options or None,
        calibration_batches=cfg.data.calibration_batches,
        calibration_batch_size=cfg.data.calibration_batch_size,
    )


def _retrain(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"retrain_epochs": cfg.retrain.epochs, "retrain_schedule": cfg.retrain.schedule}


# One function per recipe: the API call a user would write for the config (the model and data
# given); it returns the result and leaves the final model in ``model``.
def _one_shot(cfg, model, data) -> ExperimentResult:
    pretrained = cfg.dense_checkpoint is not None
    if pretrained:  # the user's trained dense weights
        model.load_state_dict(load_file(cfg.dense_checkpoint))
    return training.run_one_shot(
        model, data, _train(cfg), _prune(cfg), pretrained=pretrained, **_retrain(cfg)
    )


def _imp(cfg, model, data) -> ExperimentResult:
    p = cfg.prune
    return training.run_imp(
        model,
        data,
        _train(cfg),
        _prune(cfg),
        phases=p.phases,
        rewind=p.rewind,
        rewind_iteration=p.rewind_iteration,
        **_retrain(cfg),
    )


def _bimp(cfg, model, data) -> ExperimentResult:
    return training.run_bimp(
        model,
        data,
        _train(cfg),
        _prune(cfg),
        phases=cfg.prune.phases,
        retrain_epochs=cfg.retrain.epochs,
    )


def _gmp(cfg, model, data) -> ExperimentResult:
    p = cfg.prune
    return training.run_gmp(
        model,
        data,
        _train(cfg),
        _prune(cfg),
        start_fraction=p.gmp_start,
        end_fraction=p.gmp_end,
        frequency=p.gmp_frequency,
    )


def _dst(name: str):
    def run(cfg, model, data) -> ExperimentResult:
        p = cfg.prune
        fn = getattr(training, f"run_{name}")
        return fn(
            model,
            data,
            _train(cfg),
            sparsity=p.sparsity,
            allocation=p.allocation,
            targets=_targets(cfg),
            **p.options,
        )

    return run


def _at_init(cfg, model, data) -> ExperimentResult:
    p = cfg.prune
    return training.run_at_init(
        model,
        data,
        _train(cfg),
        p.criterion,
        p.sparsity,
        allocation=p.allocation,
        targets=_targets(cfg),
        num_batches=cfg.data.calibration_batches,
        criterion_batch_size=cfg.data.calibration_batch_size,
        criterion_options=p.criterion_options or None,
    )


def _sap(cfg, model, data) -> ExperimentResult:
    return training.run_sap(
        model, data, _train(cfg), targets=_targets(cfg), **_retrain(cfg), **cfg.prune.options
    )


def _soups(cfg, model, data) -> ExperimentResult:
    return training.run_soups(
        model,
        data,
        _train(cfg),
        _prune(cfg),
        phases=cfg.prune.phases,
        **_retrain(cfg),
        **cfg.prune.options,
    )


def _sfw(cfg, model, data) -> ExperimentResult:
    options = dict(cfg.prune.options)
    sfw = training.SFWSpec(**options.pop("sfw"), targets=_targets(cfg))
    result = training.run_sfw(
        model, data, _train(cfg), sfw, allocation=cfg.prune.allocation, **_retrain(cfg), **options
    )
    # run_sfw leaves the model trained and uncompressed; the saved model is the last level's
    result.masks.apply(model)
    return result


def _data_prune(cfg, model, data) -> ExperimentResult:
    dp = cfg.data_prune
    return prunekit.recipes.data_prune(
        model,
        data,
        _train(cfg),
        model_factory=lambda seed: build_model(cfg, data, seed),
        score=dp.score,
        fraction=dp.fraction,
        keep=dp.keep,
        auto_threshold=dp.auto_threshold,
        class_balanced=dp.class_balanced,
        budget=dp.budget,
        kd_alpha=dp.kd.alpha,
        kd_tau=dp.kd.tau,
        kd_teacher=dp.kd.teacher,
        options=dp.options,
    )


API = {
    "one_shot": _one_shot,
    "imp": _imp,
    "bimp": _bimp,
    "gmp": _gmp,
    "rigl": _dst("rigl"),
    "granet": _dst("granet"),
    "at_init": _at_init,
    "sap": _sap,
    "soups": _soups,
    "sfw": _sfw,
    "data_prune": _data_prune,
}


def _recipe(cfg: ExperimentConfig) -> str:
    return "data_prune" if cfg.data_prune.enabled else cfg.prune.schedule


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_api_and_cli_give_the_same_run(path, tmp_path):
    cfg = tiny_config(path, tmp_path)
    recipe = _recipe(cfg)
    cli = run_experiment(cfg, quiet=True)
    saved = load_compressed(run_dir(cfg) / "final" / "model.compressed.safetensors")

    data = build_data(cfg)
    model = build_model(cfg, data)
    result = API[recipe](cfg, model, data)

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    assert state_equal(state, saved) == [], f"{recipe}: final weights differ"
    assert result.final == cli["final"]
    # SFW trains no dense model: result.json keeps its trained model's metrics under "trained"
    assert result.dense == (cli["trained"] if recipe == "sfw" else cli["dense"])
    assert [dataclasses.asdict(p) for p in result.phases] == cli["phases"]
    assert (result.masks.sparsity if result.masks is not None else 0.0) == cli["sparsity"]
    # the saved model is the one whose metrics the run reports
    assert metrics_of(model, data) == cli["final"]


def test_sfw_with_retraining_saves_the_model_it_reports(tmp_path):
    """With retraining, the saved last level is the retrained one that the final metrics
    describe (the example itself does not retrain)."""
    path = next(p for p in EXAMPLES if p.stem == "sfw")
    cfg = load_config(path, [*tiny_sets(path, tmp_path), "retrain.epochs=0.5"])
    cli = run_experiment(cfg, quiet=True)
    data = build_data(cfg)
    model = build_model(cfg, data)
    model.load_state_dict(load_compressed(run_dir(cfg) / "final" / "model.compressed.safetensors"))
    assert metrics_of(model, data) == cli["final"]


def test_every_recipe_has_an_example_config():
    """A registered recipe comes with an example config (and a mapping to its API here)."""
    shown = {_recipe(load_config(p)) for p in EXAMPLES}
    missing = sorted(set(list_recipes()) - shown)
    assert missing == [], f"recipes without an example config in examples/configs: {missing}"
    assert sorted(set(list_recipes()) - set(API)) == []
