"""SNIP, Taylor, GraSP and movement: scores equal their formulas computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import prunekit
from prunekit.criteria import create_criterion
from prunekit.criteria.gradient import MovementTracker


def _batches(n=3, batch=5, d_in=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, d_in, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def _linear_grad(weight, bias, x, y):
    """dL/dW of mean cross-entropy of a single Linear layer, by hand: (softmax - onehot)ᵀ x / B."""
    p = torch.softmax(x @ weight.T + bias, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y)


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def test_snip_is_abs_of_weight_times_mean_gradient(linear):
    data = _batches()
    scores = create_criterion("snip", num_batches=2).scores(
        linear, {"weight": linear.weight}, data=data
    )
    w, b = linear.weight.detach(), linear.bias.detach()
    g = (_linear_grad(w, b, *data[0]) + _linear_grad(w, b, *data[1])) / 2
    torch.testing.assert_close(scores.full("weight"), (g * w).abs())


def test_taylor_is_mean_of_per_batch_abs(linear):
    data = _batches()
    params = {"weight": linear.weight}
    w, b = linear.weight.detach(), linear.bias.detach()
    per_batch = [(_linear_grad(w, b, x, y) * w) for x, y in data]
    got = create_criterion("taylor", num_batches=None).scores(linear, params, data=data)
    torch.testing.assert_close(got.full("weight"), sum(t.abs() for t in per_batch) / 3)
    squared = create_criterion("taylor", num_batches=None, squared=True).scores(
        linear, params, data=data
    )
    torch.testing.assert_close(squared.full("weight"), sum(t.square() for t in per_batch) / 3)


def _two_layer():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_matches_explicit_hessian(temperature):
    model = _two_layer()
    data = _batches(n=2, batch=6, d_in=3, classes=2, seed=3)
    names = ["0.weight", "2.weight"]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [s.numel() for s in shapes]
    fixed = {n: p.detach() for n, p in params.items() if n not in names}

    def loss_of(flat, x, y):
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(flat.split(sizes), shapes))))
        out = functional_call(model, {**fixed, **parts}, (x,))
        return F.cross_entropy(out / temperature, y)

    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    grads = [torch.autograd.functional.jacobian(lambda t, b=b: loss_of(t, *b), theta) for b in data]
    hessians = [
        torch.autograd.functional.hessian(lambda t, b=b: loss_of(t, *b), theta) for b in data
    ]
    g = sum(grads) / 2
    hg = sum(h @ g for h in hessians) / 2
    expected = (theta * hg).split(sizes)  # importance = -(paper's S) = θ ⊙ Hg

    scores = create_criterion("grasp", num_batches=2, temperature=temperature).scores(
        model, {n: params[n] for n in names}, data=data
    )
    for name, want, shape in zip(names, expected, shapes):
        torch.testing.assert_close(scores.full(name), want.reshape(shape), rtol=1e-4, atol=1e-9)


def test_grasp_prunes_the_largest_paper_scores():
    model = _two_layer()
    data = _batches(n=1, batch=6, d_in=3, classes=2, seed=3)
    names = ["0.weight", "2.weight"]
    params = {n: p for n, p in model.named_parameters() if n in names}
    importance = create_criterion("grasp").scores(model, params, data=data)
    paper = torch.cat([-importance.full(n).reshape(-1) for n in names])  # S = -θ ⊙ Hg
    masks = prunekit.compute_masks(model, 0.5, method="grasp", data=data)
    kept = torch.cat([masks[n].reshape(-1) for n in names])
    assert paper[~kept].min() >= paper[kept].max()


def test_movement_tracker_accumulates_minus_theta_times_grad():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    tracker = MovementTracker(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker.attach(opt)
    expected = torch.zeros(3, 4)
    for x, y in _batches(n=4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        w, b = model.weight.detach().clone(), model.bias.detach()
        expected -= w * _linear_grad(w, b, x, y)
        opt.step()
    assert tracker.steps == 4
    torch.testing.assert_close(tracker.scores().full("weight"), expected)
    masks = prunekit.compute_masks(
        model, 0.5, method="movement", criterion_options={"tracker": tracker}
    )
    kept, pruned = expected[masks["weight"]], expected[~masks["weight"]]
    assert kept.min() >= pruned.max()
    tracker.detach()
    tracker.reset()
    assert tracker.steps == 0 and not tracker.accumulated["weight"].any()


def test_movement_without_tracker_is_one_step_of_movement(linear):
    data = _batches(n=2)
    w, b = linear.weight.detach(), linear.bias.detach()
    g = (_linear_grad(w, b, *data[0]) + _linear_grad(w, b, *data[1])) / 2
    got = create_criterion("movement", num_batches=2).scores(
        linear, {"weight": linear.weight}, data=data
    )
    torch.testing.assert_close(got.full("weight"), -(w * g))


@pytest.mark.parametrize("method", ["snip", "taylor", "grasp", "movement"])
def test_scoring_leaves_the_model_untouched(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = prunekit.compute_masks(model, 0.7, method=method, data=_batches())
    assert masks.sparsity == pytest.approx(0.7, abs=1 / 56)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert model[0].weight.requires_grad is False


@pytest.mark.parametrize("method", ["snip", "taylor", "grasp", "movement"])
@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
def test_exact_sparsity_through_prune(method, allocation):
    torch.manual_seed(0)
    model = prunekit.create_model("mlp", in_features=4, hidden=(16, 8), num_classes=3)
    plan = prunekit.pruning_plan(model, 0.8, method="magnitude", allocation=allocation)
    masks = prunekit.prune(model, 0.8, method=method, allocation=allocation, data=_batches())
    assert masks.num_pruned == sum(k for _, k in plan.values())
    if allocation != "global":  # budgeted per layer: the counts do not depend on the scores
        assert {n: int((~m).sum()) for n, m in masks.items()} == {
            n: k for n, (_, k) in plan.items()
        }
    for name, p in model.named_parameters():
        if name in masks:
            assert not p[~masks[name]].any()


def test_data_as_option_and_num_batches_counted():
    model = nn.Linear(4, 3)
    read = []

    class Counting:
        def __iter__(self):
            for i, batch in enumerate(_batches(n=10)):
                read.append(i)
                yield batch

    prunekit.compute_masks(
        model, 0.5, method="snip", criterion_options={"data": Counting(), "num_batches": 3}
    )
    assert read == [0, 1, 2]  # no batch beyond num_batches is pulled from the loader


def test_custom_loss_fn_is_used(linear):
    data = _batches(n=1)

    def mse(out, y):
        return (out - F.one_hot(y, 3).float()).pow(2).mean()

    got = create_criterion("snip", loss_fn=mse).scores(linear, {"weight": linear.weight}, data=data)
    x, y = data[0]
    err = 2 * (x @ linear.weight.detach().T + linear.bias.detach() - F.one_hot(y, 3)) / (5 * 3)
    torch.testing.assert_close(got.full("weight"), (err.T @ x * linear.weight.detach()).abs())


def test_bad_options_and_data_are_clear_errors(linear):
    with pytest.raises(ValueError, match="num_batches"):
        create_criterion("snip", num_batches=0)
    with pytest.raises(TypeError, match="loss_fn"):
        create_criterion("taylor", loss_fn="mse")
    with pytest.raises(ValueError, match="temperature"):
        create_criterion("grasp", temperature=0)
    with pytest.raises(TypeError, match="tracker"):
        create_criterion("movement", tracker=object())
    with pytest.raises(TypeError, match="unexpected options"):
        create_criterion("snip", bogus=1)
    with pytest.raises(ValueError, match="data"):
        prunekit.compute_masks(linear, 0.5, method="snip")
    with pytest.raises(ValueError, match="empty"):
        prunekit.compute_masks(linear, 0.5, method="snip", data=[])
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        prunekit.compute_masks(linear, 0.5, method="snip", data=[torch.randn(2, 4)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["snip", "taylor", "grasp", "movement", "synflow"])
def test_criteria_run_on_cuda(method):
    torch.manual_seed(0)
    model = prunekit.create_model("mlp", in_features=4, hidden=(16, 8), num_classes=3).cuda()
    masks = prunekit.prune(model, 0.8, method=method, data=_batches())
    assert masks.num_pruned == round(0.8 * masks.numel)
    assert all(m.device.type == "cuda" for m in masks.values())


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_language_model_with_token_inputs(method):
    """Token-id inputs, (B, T, V) logits, and fused attention (GraSP needs a double backward)."""
    torch.manual_seed(0)
    model = prunekit.create_model("gpt", block_size=8, n_layer=1, n_head=2, n_embd=16)
    ids = torch.randint(0, 256, (2, 8))
    options = {"rounds": 3} if method == "synflow" else None
    masks = prunekit.compute_masks(
        model, 0.5, method=method, data=[(ids[:, :-1], ids[:, 1:])], criterion_options=options
    )
    assert masks.num_pruned == round(0.5 * masks.numel)
