"""RigL / GraNet through the Trainer: the step-veto hook, exact sparsity, no regrowth into
just-dropped positions, and a resumed run equal to the uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit.data import DatasetBundle, TensorData
from prunekit.training import (
    Callback,
    ConstantLR,
    Trainer,
    TrainSpec,
    make_optimizer,
    run_granet,
    run_rigl,
    run_sap,
)
from prunekit.training.dst import GraNetCallback, RigLCallback


def _data(n: int = 96) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    return TensorData(x, (x @ torch.randn(12, 3, generator=g)).argmax(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3)
    )


class _Veto(Callback):
    def __init__(self, veto_at: set[int]) -> None:
        self.veto_at = veto_at
        self.seen: list[int] = []

    def on_before_step(self, trainer, loss):
        self.seen.append(trainer.iteration)
        return False if trainer.iteration in self.veto_at else None


class _Record(Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def on_step_end(self, trainer, loss):
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def test_on_before_step_false_skips_only_that_step():
    model = _model()
    veto, rec, other = _Veto({2, 5}), _Record(), _Veto(set())
    result = Trainer(
        model,
        _data(),
        iterations=8,
        batch_size=32,
        lr_schedule=ConstantLR(0.1, 8),
        callbacks=[veto, other, rec],
    ).fit()
    assert result.iterations == 8 and len(rec.weights) == 8
    assert veto.seen == list(range(8)) and other.seen == list(range(8))  # all see every step
    for i in range(1, 8):
        same = all(torch.equal(rec.weights[i][k], rec.weights[i - 1][k]) for k in rec.weights[i])
        assert same == (i in (2, 5))


class _Stateful(Callback):
    def __init__(self) -> None:
        self.count = 0
        self.loaded = None

    def on_step_end(self, trainer, loss):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.loaded = dict(state)


def test_callback_state_travels_in_the_checkpoint(tmp_path):
    cb = _Stateful()
    Trainer(
        _model(), _data(), iterations=6, batch_size=32, checkpoint_dir=tmp_path, callbacks=[cb]
    ).fit()
    again = _Stateful()
    trainer = Trainer(
        _model(), _data(), iterations=6, batch_size=32, checkpoint_dir=tmp_path, callbacks=[again]
    )
    assert trainer.load() and again.loaded == {"count": 6}


class _CheckDST(Callback):
    """After every step: exact pruned count, pruned weights zero, update invariants."""

    def __init__(self, dst_cb, expected=None) -> None:
        self.dst_cb = dst_cb
        self.expected = expected  # callable(iteration) -> num_pruned, or None: constant
        self.updates = 0
        self.regrown = 0
        self.counts: list[int] = []
        self.grown: dict[str, torch.Tensor] = {}
        self.initial = None

    def on_fit_start(self, trainer):
        self.initial = self.dst_cb.dst.masks.clone()

    def on_step_end(self, trainer, loss):
        dst = self.dst_cb.dst
        masks = dst.masks
        assert trainer.masks is not None
        for name, mask in masks.items():
            assert torch.equal(trainer.masks[name], mask)  # the Trainer enforces the same masks
        self.counts.append(masks.num_pruned)
        if self.expected is not None:
            assert masks.num_pruned == self.expected(trainer.iteration, dst)
        params = dict(trainer.model.named_parameters())
        for name, mask in masks.items():
            assert not params[name][~mask].any()
        if dst.history and dst.history[-1]["step"] == trainer.iteration:
            self.updates += 1
            for name, (dropped, grown) in dst.last_update.items():
                assert not (dropped & grown).any()  # never regrown where just dropped
                assert not params[name][grown].any()  # regrown weights start at zero
                buf = trainer.optimizer.state[params[name]].get("momentum_buffer")
                if buf is not None:
                    assert not buf[grown].any()  # and so does their momentum
                self.regrown += int(grown.sum())
                if grown.any():
                    self.grown[name] = grown.clone()

    def grown_trained(self, model) -> int:
        """Positions first regrown in the last update with regrowth (pruned in the initial mask)
        that training has moved off zero since: the Trainer enforces the updated masks."""
        params = dict(model.named_parameters())
        return sum(int((params[n][g & ~self.initial[n]] != 0).sum()) for n, g in self.grown.items())


def test_rigl_callback_keeps_sparsity_exact_and_regrows_elsewhere():
    model = _model()
    rigl = RigLCallback(0.8, delta_t=3, alpha=0.4)
    check = _CheckDST(rigl)
    opt = make_optimizer(model, lr=0.1)
    Trainer(
        model, _data(), optimizer=opt, iterations=24, batch_size=16, callbacks=[rigl, check]
    ).fit()
    n = rigl.masks.numel
    assert set(check.counts) == {round(0.8 * n)}
    assert check.updates == len(rigl.dst.history) == 5  # steps 3..15 < t_end = 18
    assert check.regrown > 0
    assert check.grown_trained(model) > 0  # the enforcer follows the new masks
    # per layer the count never changes either (ERK densities are kept)
    assert all(h["sparsity"] == rigl.masks.sparsity for h in rigl.dst.history)


def test_granet_callback_follows_gmp_and_regrows_elsewhere():
    model = _model()
    granet = GraNetCallback(
        0.9, initial_sparsity=0.5, t_start=0, t_prune_end=12, t_end=16, delta_t=2
    )
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))

    def expected(iteration, dst):
        done = [h for h in dst.history if h["step"] <= iteration]
        return max([round(h["target_sparsity"] * total) for h in done], default=round(total / 2))

    check = _CheckDST(granet, expected)
    Trainer(model, _data(), iterations=20, batch_size=16, callbacks=[granet, check]).fit()
    assert granet.masks.num_pruned == round(0.9 * total)
    assert check.updates == 8 and check.regrown > 0 and check.grown_trained(model) > 0
    assert check.counts == sorted(check.counts)  # pruning only goes further


class _Killed(Exception):
    pass


class _KillAt(Callback):
    def __init__(self, iteration):
        self.iteration = iteration

    def on_step_end(self, trainer, loss):
        if trainer.iteration == self.iteration:
            raise _Killed


_DST = {
    "rigl": lambda: RigLCallback(0.75, delta_t=4, t_end=22, seed=3),
    "granet": lambda: GraNetCallback(0.9, t_start=0, t_prune_end=20, t_end=22, delta_t=4),
}


def _dst_trainer(kind, checkpoint_dir, extra=()):
    model = _model()
    cb = _DST[kind]()
    trainer = Trainer(
        model,
        _data(),
        optimizer=make_optimizer(model, lr=0.05),
        lr_schedule=ConstantLR(0.05, 30),
        batch_size=16,
        callbacks=[cb, *extra],
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=5,
        seed=1,
    )
    return trainer, cb


@pytest.mark.parametrize("kind", sorted(_DST))
def test_resumed_run_equals_uninterrupted(tmp_path, kind):
    full, full_cb = _dst_trainer(kind, tmp_path / "full")
    full.fit()
    killed, _ = _dst_trainer(kind, tmp_path / "cut", extra=[_KillAt(14)])
    with pytest.raises(_Killed):
        killed.fit()
    resumed, cb = _dst_trainer(kind, tmp_path / "cut")
    resumed.fit()  # resumes from iteration 10, updates at 12, 16, 20 still to come
    assert cb.dst.step_count == full_cb.dst.step_count == 30
    assert len(cb.dst.history) == 5 and cb.dst.history == full_cb.dst.history
    for name, mask in full_cb.masks.items():
        assert torch.equal(cb.masks[name], mask)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def _bundle() -> DatasetBundle:
    data = _data(120)
    return DatasetBundle(
        "toy",
        data.subset(torch.arange(80)),
        data.subset(torch.arange(80, 100)),
        data.subset(torch.arange(100, 120)),
        3,
        (12,),
    )


TRAIN = TrainSpec(epochs=2, batch_size=10, lr=0.05, lr_schedule="cosine")


def test_run_rigl_and_run_granet_recipes():
    rigl = run_rigl(_model(), _bundle(), TRAIN, sparsity=0.8, delta_t=3)
    assert rigl.masks.num_pruned == round(0.8 * rigl.masks.numel)
    assert rigl.phases[0].sparsity == rigl.masks.sparsity and rigl.details["updates"]
    granet = run_granet(_model(), _bundle(), TRAIN, sparsity=0.9, delta_t=2)
    assert granet.masks.num_pruned == round(0.9 * granet.masks.numel)
    for result in (rigl, granet):
        assert 0.0 <= result.final["test_top1"] <= 1.0
        json.dumps(result.to_dict())


def test_run_rigl_recipe_resumes_from_its_checkpoint(tmp_path):
    first = run_rigl(_model(), _bundle(), TRAIN, sparsity=0.8, delta_t=3, checkpoint_dir=tmp_path)
    # A finished run found in checkpoint_dir is restored, not retrained.
    again = run_rigl(_model(), _bundle(), TRAIN, sparsity=0.8, delta_t=3, checkpoint_dir=tmp_path)
    assert again.details["updates"] == first.details["updates"]
    assert again.final == first.final


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="t_end_fraction"):
        RigLCallback(0.9, t_end_fraction=1.5)
    with pytest.raises(ValueError, match="prune_end_fraction"):
        GraNetCallback(0.9, prune_end_fraction=-0.1)
    with pytest.raises(TypeError, match="masks"):
        RigLCallback(masks={"w": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="sparsity"):
        Trainer(_model(), _data(), iterations=2, callbacks=[RigLCallback()]).fit()
    with pytest.raises(ValueError, match="rounds"):
        run_sap(_model(), _bundle(), TRAIN, rounds=0)
