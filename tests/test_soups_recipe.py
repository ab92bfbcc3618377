"""run_soups: masks kept across phases, greedy >= its first ingredient, exact resumption."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.masks import MaskSet
from prunekit.data import DatasetBundle, TensorData, create_dataset
from prunekit.recipes.context import original_schedule
from prunekit.recipes.methods.soups import TrainerRetrain, run_soups
from prunekit.training import PruneSpec, TrainSpec
from prunekit.training.soups import check_masks
from prunekit.training.trainer import Callback


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    data = create_dataset("digits", seed=0)
    flat = lambda d, n: TensorData(d.x[:n].reshape(min(n, len(d)), -1), d.y[:n])  # noqa: E731
    return DatasetBundle(
        "digits", flat(data.train, 320), flat(data.val, 120), flat(data.test, 160), 10, (64,)
    )


def _model(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(32)] if bn else []
    return nn.Sequential(nn.Linear(64, 32), *norm, nn.ReLU(), nn.Linear(32, 10))


TRAIN = TrainSpec(epochs=1, batch_size=64, lr=0.1, lr_schedule="cosine", weight_decay=5e-4)


def test_soup_keeps_masks_across_phases(digits, tmp_path):
    model = _model()
    result = run_soups(
        model, digits, TRAIN, PruneSpec(sparsity=0.8), phases=2, m=2, out_dir=tmp_path
    )
    assert [p.phase for p in result.phases] == [1, 2]
    first = MaskSet.load(tmp_path / "phase_1" / "masks.safetensors")
    final = result.masks
    assert final.is_subset_of(first)  # the next phase prunes the soup
    assert final.sparsity == pytest.approx(0.8, abs=1e-3)
    for phase in result.phases:
        assert phase.soup_sparsity["uniform"] == pytest.approx(phase.sparsity, abs=0)
        assert phase.soup_sparsity["greedy"] == pytest.approx(phase.sparsity, abs=0)
        assert len(phase.ingredients) == 2
    check_masks(model.state_dict(), final)  # the model holds the last soup, mask intact
    zeros = sum(int((model.state_dict()[k] == 0).sum()) for k in final)
    assert zeros == sum(int((~m).sum()) for m in final.values())
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["recipe"] == "soups" and len(data["phases"]) == 2
    assert set(data["phases"][0]) >= {"ingredients", "uniform", "greedy", "ensemble"}
    assert json.loads((tmp_path / "result.json").read_text())["final"] == data["final"]
    assert not (tmp_path / "phase_1" / "checkpoints").exists()  # removed once the phase is done


def test_greedy_soup_never_worse_than_its_first_ingredient(digits):
    result = run_soups(
        _model(),
        digits,
        TRAIN,
        PruneSpec(sparsity=0.9),
        phases=2,
        m=3,
        vary="weight_decay",
        merge="greedy",
    )
    for phase in result.phases:
        accs = [ing["val_top1"] for ing in phase.ingredients]
        first = phase.greedy["ingredients"][0]
        assert accs[first] == max(accs)
        assert phase.greedy["val_top1"] >= accs[first]
        assert [ing["value"] for ing in phase.ingredients] == pytest.approx([2.5e-4, 5e-4, 1e-3])
        assert phase.merge == "greedy"
        assert phase.retrained["val_top1"] == pytest.approx(phase.greedy["val_top1"])


class _Interrupt(Callback):
    """Stops the ingredient trained with ``seed`` at ``iteration`` (once)."""

    def __init__(self, seed: int, iteration: int) -> None:
        self.seed, self.iteration = seed, iteration

    def on_step_end(self, trainer, loss) -> None:
        if trainer.seed == self.seed and trainer.iteration == self.iteration:
            raise KeyboardInterrupt


def test_resumed_soup_equals_uninterrupted(digits, tmp_path):
    kwargs = dict(phases=2, m=2, merge="best", checkpoint_every=2)
    full_model = _model()
    full = run_soups(full_model, digits, TRAIN, PruneSpec(0.7), out_dir=tmp_path / "a", **kwargs)

    model = _model()
    with pytest.raises(KeyboardInterrupt):  # ingredient 1 of phase 1 stops at iteration 3
        run_soups(
            model,
            digits,
            TRAIN,
            PruneSpec(0.7),
            out_dir=tmp_path / "b",
            callbacks=[_Interrupt(TRAIN.seed + 1001, 3)],
            **kwargs,
        )
    phase_1 = tmp_path / "b" / "phase_1"
    assert (phase_1 / "ingredient_000.safetensors").is_file()
    assert not (phase_1 / "ingredient_001.safetensors").exists()
    assert any((phase_1 / "checkpoints").iterdir())  # a mid-run Trainer checkpoint

    model = _model()
    resumed = run_soups(model, digits, TRAIN, PruneSpec(0.7), out_dir=tmp_path / "b", **kwargs)
    assert resumed.phases[0].resumed == [0]
    a, b = full.to_dict(), resumed.to_dict()
    for phase in a["phases"] + b["phases"]:
        phase.pop("resumed")
    assert a == b
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_vary_schedule_and_length(digits):
    model = _model(bn=False)
    result = run_soups(
        model, digits, TRAIN, PruneSpec(0.5), m=2, vary="lr_schedule", pretrained=True
    )
    phase = result.phases[0]
    assert [ing["value"] for ing in phase.ingredients] == ["llr", "clr"]
    assert phase.retrain_schedule == "varied"
    assert result.dense_iterations == 0
    result = run_soups(
        model, digits, TRAIN, PruneSpec(0.6), m=2, vary="length", values=[2, 4], pretrained=True
    )
    assert [ing["iterations"] for ing in result.phases[0].ingredients] == [2, 4]
    assert result.retrain_iterations == 6
    check_masks(model.state_dict(), result.masks)


def test_explicit_sparsities_and_retrain_lr(digits):
    result = run_soups(
        _model(bn=False),
        digits,
        TRAIN,
        PruneSpec(0.99),  # ignored: the phases follow ``sparsities``
        m=1,
        sparsities=[0.5, 0.7],
        retrain_lr=0.02,
        pretrained=True,
    )
    assert [p.target_sparsity for p in result.phases] == [0.5, 0.7]
    assert [p.sparsity for p in result.phases] == pytest.approx([0.5, 0.7], abs=1e-3)
    assert all(p.lr0 == pytest.approx(0.02) for p in result.phases)
    with pytest.raises(ValueError, match="sparsities"):
        run_soups(_model(), digits, TRAIN, PruneSpec(0.5), sparsities=[0.9, 0.5], pretrained=True)


def test_retrain_fn_is_picklable_and_keeps_masks(digits):
    model = _model()
    masks = prunekit.compute_masks(model, 0.5)
    masks.apply(model)
    fn = TrainerRetrain(digits.train, TRAIN, original_schedule(TRAIN, digits))
    clone = pickle.loads(pickle.dumps(fn))
    variant = {"ingredient": 0, "seed": 3, "weight_decay": 1e-4, "iterations": 4}
    variant["lr_schedule"] = "clr"
    first = fn(_copy(model), masks.clone(), dict(variant))
    second = clone(_copy(model), masks.clone(), dict(variant))
    for key in first:
        assert torch.equal(first[key], second[key])
    check_masks(first, masks)


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vary": "momentum"}, "vary"),
        ({"merge": "mean"}, "merge"),
        ({"m": 0}, "m:"),
        ({"phases": 0}, "phases"),
        ({"retrain_schedule": "warp"}, "retrain_schedule"),
        ({"vary": "lr_schedule", "values": ["llr", "nope", "ft"]}, "retrain_schedule"),
        ({"bn_fraction": 0.0}, "bn_fraction"),
    ],
)
def test_bad_options(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_soups(_model(), digits, TRAIN, PruneSpec(0.5), pretrained=True, **kwargs)


def test_needs_a_validation_split(digits):
    empty = DatasetBundle(
        "x", digits.train, TensorData(digits.val.x[:0], digits.val.y[:0]), digits.test, 10, (64,)
    )
    with pytest.raises(ValueError, match="validation"):
        run_soups(_model(), empty, TRAIN, PruneSpec(0.5), pretrained=True)


def test_api_and_config_run_the_same_stages(tmp_path):
    """``prunekit run`` with schedule soups and run_soups give bitwise-identical weights."""
    import prunekit.recipes
    from prunekit.experiments.config import resolve
    from prunekit.experiments.runner import (
        build_data,
        build_model,
        run_context,
        run_dir,
        run_experiment,
    )
    from prunekit.export import load_compressed

    assert prunekit.recipes.soups is run_soups
    options = {"m": 2, "merge": "greedy", "vary": "weight_decay"}
    cfg = resolve(
        {
            "name": "tiny",
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "data": {"name": "digits"},
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1},
            "prune": {"sparsity": 0.8, "schedule": "soups", "phases": 2, "options": options},
            "retrain": {"epochs": 0.5, "schedule": "llr"},
            "output": str(tmp_path / "out"),
        }
    )
    cli = run_experiment(cfg, quiet=True)
    saved = load_compressed(run_dir(cfg) / "final" / "model.compressed.safetensors")
    data = build_data(cfg)
    model = build_model(cfg, data)
    ctx = run_context(cfg, model, data, lambda message: None, None)
    api = run_soups(model, data, ctx.train, ctx.prune, phases=2, retrain_epochs=0.5, **options)
    assert api.final == cli["final"]
    assert [dataclasses.asdict(p) for p in api.phases] == cli["phases"]
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), key


def test_option_errors_come_before_any_training(digits):
    from prunekit.recipes import get_recipe
    from prunekit.recipes.context import RunContext
    from prunekit.recipes.methods.soups import SoupsOptions

    recipe = get_recipe("soups")
    assert recipe.option_names() == [
        "m",
        "vary",
        "values",
        "retrain_lr",
        "sparsities",
        "merge",
        "workers",
        "bn_fraction",
        "keep_checkpoints",
    ]
    ctx = RunContext(_model(), digits, TRAIN, PruneSpec(0.5), options=SoupsOptions(m=0))
    with pytest.raises(ValueError, match="^m: expected a positive int"):
        recipe.stages(ctx)
    ctx.options = SoupsOptions(retrain_lr=-1.0)
    with pytest.raises(ValueError, match="^retrain_lr: expected a positive number"):
        recipe.stages(ctx)
    stages = recipe.stages(
        RunContext(_model(), digits, TRAIN, PruneSpec(0.5), options=SoupsOptions())
    )
    assert [s.name for s in stages] == ["dense", "recipe"]
