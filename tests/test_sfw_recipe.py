"""SFW through the Trainer (feasible iterates, exact resume) and the run_sfw recipe."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import toy_bundle
from prunekit.frank_wolfe import SFW
from prunekit.training import (
    FrankWolfeCallback,
    PruneSpec,
    SFWSpec,
    Trainer,
    TrainSpec,
    make_sfw_optimizer,
    run_sfw,
)
from prunekit.training.lr import CosineLR
from prunekit.training.trainer import Callback

DATA = toy_bundle(240, 16, 4)
TRAIN = TrainSpec(epochs=2, batch_size=32, lr=0.05, lr_schedule="cosine")


def _mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(32)] if bn else []
    return nn.Sequential(nn.Linear(16, 32), *norm, nn.ReLU(), nn.Linear(32, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, 16)),
        nn.Conv1d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )


@pytest.mark.parametrize(
    "spec",
    [
        SFWSpec("k_support", k_fraction=0.1, lr=1.0),
        SFWSpec("k_sparse", k=20, lr=0.5, rescale="diameter", others=None, others_lr=0.01),
        SFWSpec("group_k_support", k_fraction=0.25, lr=1.0, scope="global"),
        SFWSpec("spectral_k_support", k_fraction=0.25, lr=1.0, k_delay=4),
        SFWSpec("l1", lr=1.0),
    ],
    ids=lambda s: s.constraint,
)
def test_trainer_keeps_sfw_iterates_feasible(spec):
    model = _mlp()
    with torch.no_grad():  # start far outside every set: the callback must pull it in
        for p in model.parameters():
            p.mul_(50.0)
    optimizer = make_sfw_optimizer(model, spec)
    assert max(r for r in optimizer.feasibility() if r is not None) > 1.0
    check = FrankWolfeCallback(check_every_step=True)
    history = Trainer(
        model,
        DATA.train,
        optimizer=optimizer,
        lr_schedule=CosineLR(spec.lr, 12),
        batch_size=32,
        callbacks=[check],
    ).fit()
    assert check.max_ratio <= 1.0 + 1e-5
    assert all(h["fw_max_norm_ratio"] <= 1.0 + 1e-5 for h in history.history)
    assert all(r is None or r <= 1.0 + 1e-5 for r in optimizer.feasibility())
    if spec.others is None:  # free groups are scaled with the schedule through lr_scale
        free = [g for g in optimizer.param_groups if g["constraint"] is None]
        assert free and all(g["lr_scale"] == pytest.approx(0.02) for g in free)


class _Stop(Callback):
    def on_step_end(self, trainer, loss) -> None:
        if trainer.iteration == 5:
            raise KeyboardInterrupt


def test_sfw_trainer_checkpoint_resume_is_exact(tmp_path):
    """The power-iteration LMO keeps a warm-start basis; it must survive a checkpoint."""
    spec = SFWSpec("spectral_k_support", k=2, lr=1.0, options={"svd_method": "power"})

    def trainer(model, ckpt, callbacks=()):
        return Trainer(
            model,
            DATA.train,
            optimizer=make_sfw_optimizer(model, spec),
            lr_schedule=CosineLR(1.0, 9),
            batch_size=32,
            checkpoint_dir=ckpt,
            checkpoint_every=2,
            callbacks=[FrankWolfeCallback(), *callbacks],
        )

    full = _mlp()
    trainer(full, tmp_path / "a").fit()
    model = _mlp()
    with pytest.raises(KeyboardInterrupt):
        trainer(model, tmp_path / "b", [_Stop()]).fit()
    model = _mlp()
    resumed = trainer(model, tmp_path / "b")
    resumed.fit()
    for key, value in full.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    state = resumed.optimizer.state_dict()["state"]
    assert any("lmo.basis" in entry for entry in state.values())
    assert isinstance(resumed.optimizer, SFW)


def test_sfw_state_dict_round_trip_keeps_live_state():
    model = _mlp()
    spec = SFWSpec("spectral_k_support", k=2, options={"svd_method": "power"})
    opt = make_sfw_optimizer(model, spec)
    opt.make_feasible()
    torch.nn.functional.cross_entropy(model(DATA.train.x[:32]), DATA.train.y[:32]).backward()
    opt.step()
    saved = opt.state_dict()
    live = opt.state[model[0].weight]
    assert "basis" in live["lmo"]  # saving does not strip the optimizer's own state
    other = make_sfw_optimizer(_mlp(), spec)
    other.load_state_dict(saved)
    restored = other.state[other.param_groups[0]["params"][0]]
    assert torch.equal(restored["lmo"]["basis"], live["lmo"]["basis"])


def test_run_sfw_magnitude_with_and_without_retraining(tmp_path):
    model = _mlp(bn=True)
    result = run_sfw(
        model,
        DATA,
        TRAIN,
        SFWSpec("k_support", k_fraction=0.1),
        levels=(0.5, 0.9),
        retrain_epochs=1,
        out_dir=tmp_path,
    )
    assert [p.sparsity for p in result.phases] == pytest.approx([0.5, 0.9], abs=1e-3)
    assert result.masks.sparsity == pytest.approx(0.9, abs=1e-3)
    assert result.config["max_norm_ratio"] <= 1.0 + 1e-5
    for phase in result.phases:
        assert set(phase.pruned) >= {"val_top1", "test_top1"}
        assert set(phase.retrained) >= {"val_top1", "test_top1"}
        assert phase.retrain_iterations == 5
    assert result.dense_iterations == 10
    assert (model[0].weight == 0).float().mean() < 0.5  # the model itself stays uncompressed
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["recipe"] == "sfw" and data["config"]["optimizer"] == "sfw"
    assert (tmp_path / "train" / "checkpoint.safetensors").is_file()
    assert json.loads((tmp_path / "result.json").read_text())["dense"] == data["dense"]


def test_run_sfw_no_retraining_and_baseline():
    result = run_sfw(_mlp(), DATA, TRAIN, None, levels=(0.8,))
    phase = result.phases[0]
    assert phase.retrained == {} and phase.retrain_schedule == "none"
    assert result.final == phase.pruned
    assert result.config["max_norm_ratio"] is None
    assert result.config["optimizer"] == "sgd"


def test_run_sfw_filters_and_low_rank():
    spec = SFWSpec("group_k_support", k_fraction=0.25)
    result = run_sfw(_cnn(), DATA, TRAIN, spec, compress="filters", levels=(0.5,))
    masks = result.masks
    conv = masks["1.weight"]
    assert conv.shape == (8, 1, 3)
    rows = conv.reshape(8, -1)
    assert torch.equal(rows.all(1), rows.any(1))  # whole filters
    assert int(rows.all(1).sum()) == 4
    spec = SFWSpec("spectral_k_support", k_fraction=0.25)
    result = run_sfw(
        _mlp(), DATA, TRAIN, spec, compress="low_rank", levels=(0.25,), retrain_epochs=1
    )
    phase = result.phases[0]
    assert phase.ranks == {"0.weight": 4, "2.weight": 1}
    assert phase.params_ratio < 1.0
    assert result.masks is None and phase.retrained


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compress": "prune"}, "compress"),
        ({"levels": (1.0,)}, "levels"),
        ({"compress": "low_rank", "levels": (0.0,)}, "levels"),
        ({"levels": ()}, "levels"),
        ({"retrain_schedule": "warp"}, "retrain_schedule"),
        ({"compress": "low_rank", "retrain_epochs": 1, "retrain_schedule": "allr"}, "allr"),
    ],
)
def test_run_sfw_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_sfw(_mlp(), DATA, TRAIN, SFWSpec(), pretrained=True, **kwargs)


def test_run_sfw_bad_spec():
    with pytest.raises(TypeError, match="sfw"):
        run_sfw(_mlp(), DATA, TRAIN, PruneSpec(), pretrained=True)  # type: ignore[arg-type]


def test_run_sfw_is_the_registered_recipe():
    import prunekit.recipes
    from prunekit.recipes import get_recipe
    from prunekit.recipes.context import RunContext
    from prunekit.recipes.methods.sfw import SFWOptions

    assert prunekit.recipes.sfw is run_sfw
    recipe = get_recipe("sfw")
    assert not recipe.trains_dense
    ctx = RunContext(_mlp(), DATA, TRAIN, PruneSpec(), options=SFWOptions(levels=[0.5]))
    assert [s.name for s in recipe.stages(ctx)] == ["train", "compress"]
    ctx.options = SFWOptions(levels=[1.5])
    with pytest.raises(ValueError, match=r"levels: expected values in \[0, 1\)"):
        recipe.stages(ctx)
