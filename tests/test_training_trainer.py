"""Trainer: masks enforced every step, evaluation metrics, clear errors on model/data mismatch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.data import TensorData
from prunekit.models import GPT, GPTConfig
from prunekit.training import Callback, ConstantLR, CosineLR, Trainer, evaluate, make_optimizer


def _data(n=96, features=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return TensorData(x, (x @ w).argmax(1))


def _mlp(features=16, classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))


def test_training_reduces_loss_and_keeps_masks_exactly():
    data = _data()
    model = _mlp()
    masks = prunekit.prune(model, 0.75)
    zeros = {n: int((~m).sum()) for n, m in masks.items()}
    opt = make_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)

    class Check(Callback):
        def on_step_end(self, trainer, loss):  # after every optimizer step
            params = dict(trainer.model.named_parameters())
            for name, mask in masks.items():
                assert int((params[name][~mask] != 0).sum()) == 0
                buf = trainer.optimizer.state[params[name]]["momentum_buffer"]
                assert int((buf[~mask] != 0).sum()) == 0

    before = evaluate(model, data)["loss"]
    trainer = Trainer(
        model,
        data,
        optimizer=opt,
        lr_schedule=CosineLR(0.1, 60),
        batch_size=16,
        masks=masks,
        callbacks=[Check()],
    )
    result = trainer.fit()
    assert result.iterations == 60 and trainer.iters_per_epoch == 6
    assert len(result.history) == 10
    assert evaluate(model, data)["loss"] < before
    params = dict(model.named_parameters())
    assert {n: int((params[n] == 0).sum()) for n in masks} == zeros


def test_lr_is_set_per_iteration():
    seen = []

    class Record(Callback):
        def on_step_end(self, trainer, loss):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    Trainer(
        _mlp(), _data(), lr_schedule=CosineLR(0.2, 10), batch_size=32, callbacks=[Record()]
    ).fit()
    assert seen == [pytest.approx(0.1 * (1 + math.cos(math.pi * t / 10))) for t in range(10)]


def test_evaluate_matches_hand_computation():
    model = nn.Linear(3, 6, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(6, 3))
    x = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [1.0, 0.5, 0]])
    y = torch.tensor([0, 2, 2, 1])
    with torch.no_grad():
        logits = model(x)
    m = evaluate(model, TensorData(x, y), batch_size=3)
    assert m["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)))
    assert m["top1"] == pytest.approx(2 / 4)  # rows 0 and 2 right
    assert m["top5"] == pytest.approx(
        float((logits.topk(5).indices == y[:, None]).any(1).float().mean())
    )


def test_language_model_perplexity():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tokens = torch.randint(0, 32, (40, 9))
    data = TensorData(tokens[:, :-1], tokens[:, 1:])
    trainer = Trainer(
        model,
        data,
        task="lm",
        lr_schedule=ConstantLR(1e-3, 4),
        batch_size=8,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
    )
    trainer.fit()
    m = trainer.evaluate(data)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert 1.0 < m["perplexity"] < 64


def test_model_data_shape_mismatch_is_a_clear_error():
    data = _data(features=16)
    with pytest.raises(ValueError, match="model/data shape mismatch.*\\(16,\\)"):
        Trainer(nn.Linear(10, 4), data, iterations=1).fit()
    with pytest.raises(ValueError, match="label 3 but the model has only 2 outputs"):
        Trainer(nn.Linear(16, 2), data, iterations=1).fit()
    with pytest.raises(ValueError, match="model/data shape mismatch.*task 'lm'"):
        Trainer(nn.Linear(16, 4), data, iterations=1, task="lm").fit()


def test_bad_arguments():
    data = _data()
    with pytest.raises(ValueError, match="iterations"):
        Trainer(_mlp(), data)
    with pytest.raises(ValueError, match="lr_schedule: covers 5"):
        Trainer(_mlp(), data, lr_schedule=ConstantLR(0.1, 5), iterations=10)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(_mlp(), data, iterations=1, batch_size=0)
    with pytest.raises(TypeError, match="train_data"):
        Trainer(_mlp(), [1, 2, 3], iterations=1)
    with pytest.raises(ValueError, match="task"):
        Trainer(_mlp(), data, iterations=1, task="regression")


def test_epochs_and_data_order_are_deterministic():
    data = _data()
    t1 = Trainer(_mlp(), data, epochs=2, batch_size=40, seed=3)
    t2 = Trainer(_mlp(), data, epochs=2, batch_size=40, seed=3)
    assert t1.total == 6  # ceil(96 / 40) = 3 per epoch
    for it in range(6):
        assert torch.equal(t1.batch_at(it)[0], t2.batch_at(it)[0])
    seen = torch.cat([t1.batch_at(it)[1] for it in range(3)])
    assert seen.numel() == 96  # one epoch visits every example once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_keeps_masks():
    data = _data()
    model = _mlp()
    masks = prunekit.prune(model, 0.5)
    trainer = Trainer(model, data, iterations=10, batch_size=16, masks=masks, device="cuda")
    assert trainer.amp_dtype is not None
    trainer.fit()
    for name, param in model.named_parameters():
        if name in masks:
            assert int((param[~masks[name].cuda()] != 0).sum()) == 0


def test_map_style_dataset_gives_the_same_run_as_tensors():
    data = _data()

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data.x[i], data.y[i]

    a, b = _mlp(), _mlp()
    Trainer(a, data, iterations=8, batch_size=16, lr_schedule=ConstantLR(0.1, 8)).fit()
    Trainer(b, Items(), iterations=8, batch_size=16, lr_schedule=ConstantLR(0.1, 8)).fit()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert evaluate(b, Items()) == evaluate(b, data)
