"""A run killed mid-way and resumed from its checkpoint ends with exactly the uninterrupted weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.schedules import GMP
from prunekit.data import CropFlip, TensorData
from prunekit.training import Callback, CosineLR, GMPCallback, PruneSpec, Trainer, make_optimizer
from prunekit.training.checkpoint import checkpoint_file, load_checkpoint, save_checkpoint


class _Killed(Exception):
    pass


class _KillAt(Callback):
    def __init__(self, iteration):
        self.iteration = iteration

    def on_step_end(self, trainer, loss):
        if trainer.iteration == self.iteration:
            raise _Killed


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, 6, 6, generator=g)
    return TensorData(x, (x.flatten(1).sum(1) > 0).long())


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)  # consumes the global RNG: its state must be restored
        self.fc = nn.Linear(4 * 36, 2)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).flatten(1)))


def _run(ckdir, kill_at=None, gmp=False, seed_model=0):
    torch.manual_seed(
        seed_model
    )  # a resumed run starts from a different model: the checkpoint wins
    model = _Net()
    masks = None if gmp else prunekit.prune(model, 0.6)
    callbacks = [_KillAt(kill_at)] if kill_at else []
    if gmp:
        callbacks.insert(0, GMPCallback(GMP(0.8, start=4, end=24, frequency=5), PruneSpec(0.8)))
    opt = make_optimizer(model, "sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    trainer = Trainer(
        model,
        _data(),
        optimizer=opt,
        lr_schedule=CosineLR(0.05, 30),
        batch_size=8,
        masks=masks,
        augment=CropFlip(1),
        seed=7,
        checkpoint_dir=ckdir,
        checkpoint_every=5,
        callbacks=callbacks,
    )
    try:
        trainer.fit()
    except _Killed:
        return None
    return trainer


@pytest.mark.parametrize("gmp", [False, True])
def test_resume_equals_uninterrupted(tmp_path, gmp):
    full = _run(tmp_path / "a", gmp=gmp)
    assert _run(tmp_path / "b", kill_at=13, gmp=gmp) is None  # last checkpoint: iteration 10
    _, _, extra = load_checkpoint(checkpoint_file(tmp_path / "b"), _Net(), restore_rng=False)
    assert extra["total"] == 30
    resumed = _run(tmp_path / "b", gmp=gmp, seed_model=1)
    assert resumed.iteration == full.iteration == 30
    for (name, a), (_, b) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items()
    ):
        assert torch.equal(a, b), name
    assert resumed.masks.keys() == full.masks.keys()
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in full.history]
    )


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, opt, iteration=3, extra={"note": "x"})
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    other = nn.Linear(4, 3)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.01)
    iteration, masks, extra = load_checkpoint(path, other, opt2)
    assert (iteration, masks, extra["note"]) == (3, None, "x")
    assert torch.equal(other.weight, model.weight)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["step"], s2["step"])
    with pytest.raises(ValueError, match="does not fit the model"):
        load_checkpoint(path, nn.Linear(5, 3))
