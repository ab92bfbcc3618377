"""MaskSet: enforcement during training, persistence, finalize, validation."""

from __future__ import annotations

import pytest
import torch

import prunekit
from conftest import INPUTS, toy_cnn, toy_mlp
from prunekit import MaskMismatchError, MaskSet
from prunekit.criteria import CRITERIA

DATA_FREE_METHODS = [m for m in CRITERIA.names() if not CRITERIA.get(m).requires_data]


def _train(model, x, optimizer, steps=20, enforcer=None, masks=None):
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        if masks is not None:
            masks.enforce(model, optimizer)


def _pruned_are_zero(model, masks):
    params = dict(model.named_parameters())
    return all(bool((params[n][~m] == 0).all()) for n, m in masks.items())


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
}


@pytest.mark.parametrize("method", DATA_FREE_METHODS)
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "bool"])
def test_zeros_survive_training_with_attached_masks(kind, opt, method, fast):
    model = toy_mlp() if kind == "mlp" else toy_cnn()
    x = INPUTS[kind]()
    masks = prunekit.prune(model, 0.8, method=method)
    optimizer = OPTIMIZERS[opt](model.parameters())
    with masks.attach(optimizer, model, fast=fast):
        _train(model, x, optimizer)
    assert _pruned_are_zero(model, masks)
    # optimizer state of pruned entries is zero too, so nothing can leak back later
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for key, value in optimizer.state[params[name]].items():
            if torch.is_tensor(value) and value.shape == mask.shape:
                assert bool((value[~mask] == 0).all()), (name, key)
    # and the kept weights did train
    assert any(bool((params[n][m] != 0).any()) for n, m in masks.items())


def test_manual_enforce_in_user_loop():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.9, allocation="uniform")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, INPUTS["mlp"](), optimizer, masks=masks)
    assert _pruned_are_zero(model, masks)


def test_without_enforcement_zeros_do_come_back():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, INPUTS["mlp"](), optimizer)
    assert not _pruned_are_zero(model, masks)


def test_detached_enforcer_stops():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = masks.attach(optimizer, model)
    handle.remove()
    _train(model, INPUTS["mlp"](), optimizer, steps=3)
    assert not _pruned_are_zero(model, masks)


def test_save_load_round_trip(tmp_path):
    model = toy_cnn()
    masks = prunekit.prune(model, 0.73, allocation="erk")
    path = tmp_path / "masks.safetensors"
    masks.save(path, metadata={"note": "erk"})
    loaded = MaskSet.load(path)
    assert list(loaded) == list(masks)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
    assert loaded.metadata == {"note": "erk"}
    # bit-packed: the file is far smaller than one byte per entry
    assert path.stat().st_size < masks.numel / 4


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="not a prunekit"):
        MaskSet.load(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        MaskSet.load(tmp_path / "missing.safetensors")


def test_finalize_keeps_state_dict_keys_and_leaves_no_hooks():
    model = toy_cnn()
    keys = list(model.state_dict())
    masks = prunekit.prune(model, 0.5)
    assert list(model.state_dict()) == keys
    masks.finalize(model)
    assert list(model.state_dict()) == keys
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    assert _pruned_are_zero(model, masks)


def test_validate_names_first_mismatch():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.5)
    wrong = MaskSet({"0.weight": masks["0.weight"], "2.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError, match="'2.weight' has shape"):
        wrong.validate(model)
    with pytest.raises(MaskMismatchError, match="'nope.weight' is not in the model"):
        MaskSet({"nope.weight": torch.ones(1, dtype=torch.bool)}).validate(model)


def test_masks_must_be_boolean():
    with pytest.raises(TypeError, match="torch.bool"):
        MaskSet({"w": torch.ones(3)})


def test_report_counts_and_to_dict():
    model = toy_mlp()
    masks = prunekit.prune(model, 0.75, allocation="uniform")
    report = prunekit.sparsity_report(model, masks)
    assert report.params == masks.numel
    assert report.nonzeros == masks.numel - masks.num_pruned
    data = report.to_dict()
    assert data["total"]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert [row["name"] for row in data["layers"]] == list(masks)
    text = str(report)
    assert "total" in text and "75.00%" in text


def test_compressed_export_round_trip_and_size(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    dense_path = tmp_path / "dense.safetensors"
    prunekit.save_compressed(model, dense_path)
    masks = prunekit.prune(model, 0.9)
    masks.finalize(model)
    path = tmp_path / "sparse.safetensors"
    prunekit.save_compressed(model, path)
    restored = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    prunekit.load_compressed_into(restored, path)
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    # at 90% sparsity the file is about 15% of the dense fp32 file
    assert path.stat().st_size < 0.17 * dense_path.stat().st_size


class _CustomSGD(torch.optim.SGD):
    """A subclass: not trusted to keep zeros from masked gradients, so zeroed after each step."""


ALL_OPTIMIZERS = {
    "SGD-nesterov": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
    "Adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=1e-2),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=1e-2),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, weight_decay=1e-3),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "custom-subclass": lambda p: _CustomSGD(p, lr=0.05, momentum=0.9),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "bool"])
@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
def test_every_optimizer_keeps_weights_and_state_zero(name, fast):
    model = toy_mlp()
    masks = prunekit.prune(model, 0.8)
    optimizer = ALL_OPTIMIZERS[name](model.parameters())
    handle = masks.attach(optimizer, model, fast=fast)
    assert handle.masks_gradients == (name not in ("custom-subclass", "Adamax"))
    _train(model, INPUTS["mlp"](), optimizer)
    assert _pruned_are_zero(model, masks)
    params = dict(model.named_parameters())
    for pname, mask in masks.items():
        for key, value in optimizer.state[params[pname]].items():
            if torch.is_tensor(value) and value.shape == mask.shape:
                assert bool((value[~mask] == 0).all()), (pname, key)
    handle.remove()
