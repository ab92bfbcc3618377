"""MaskLoRA / ScaleLoRA / LoRA: formulas, exact sparsity after merging, parameter selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.llm.lora import AdapterLinear, adapter_modules, add_adapters, merge_adapters
from prunekit.llm.perp import linear_warmup_decay, parse_params, select_trainable
from prunekit.models.gpt import GPT, GPTConfig


def _sparse_linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(12, 8)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.5] = 0.0
    return lin


def test_formulas_match_definitions() -> None:
    lin = _sparse_linear()
    w = lin.weight.detach().clone()
    mask = w != 0
    x = torch.randn(3, 12)
    for kind in ("lora", "masklora", "scalelora"):
        ad = AdapterLinear(lin, kind, rank=4, alpha=8.0)
        with torch.no_grad():
            ad.lora_A.normal_()
            ad.lora_B.normal_()
        ba = ad.lora_B @ ad.lora_A
        expected = {
            "lora": w + 2.0 * ba,
            "masklora": w + 2.0 * ba * mask,
            "scalelora": w * ba,
        }[kind]
        torch.testing.assert_close(ad.effective_weight(), expected)
        torch.testing.assert_close(ad(x), x @ expected.t() + lin.bias)


def test_initialisation_is_identity() -> None:
    lin = _sparse_linear()
    x = torch.randn(5, 12)
    for kind in ("lora", "masklora", "scalelora"):
        ad = AdapterLinear(lin, kind, rank=3)
        torch.testing.assert_close(ad(x), lin(x))
    scale = AdapterLinear(lin, "scalelora", rank=3)
    torch.testing.assert_close(scale.delta(), torch.ones(8, 12))
    assert torch.allclose(scale.lora_A, torch.full((3, 12), 1 / math.sqrt(3)))


@pytest.mark.parametrize("kind", ["masklora", "scalelora"])
def test_merge_keeps_pruned_positions_exactly_zero(kind: str) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8))
    masks = MaskSet()
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and name.endswith("weight") and p.dim() == 2:
            keep = torch.rand_like(p) > 0.6
            masks[name] = keep
    masks.apply(model)
    targets = [n[: -len(".weight")] for n in masks]
    add_adapters(model, targets, kind, rank=2, masks=dict(masks.items()))
    assert len(adapter_modules(model)) == len(targets)
    with torch.no_grad():
        for ad in adapter_modules(model).values():
            ad.lora_A.normal_()
            ad.lora_B.normal_()
    merged = merge_adapters(model)
    assert set(merged) == set(targets) and not adapter_modules(model)
    named = dict(model.named_parameters())
    for name, keep in masks.items():
        w = named[name]
        assert torch.equal(w[~keep], torch.zeros_like(w[~keep]))
        assert not torch.signbit(w[~keep]).any()  # no -0.0 either
        assert (w[keep] != 0).float().mean() > 0.9  # kept weights really changed and live
    assert set(named) == {n for n, _ in GPT(model.config).named_parameters()}


def test_plain_lora_merge_fills_pruned_positions() -> None:
    lin = _sparse_linear()
    holder = nn.Sequential(lin)
    add_adapters(holder, ["0"], "lora", rank=2)
    with torch.no_grad():
        holder[0].lora_B.normal_()
    merge_adapters(holder)
    assert isinstance(holder[0], nn.Linear)
    assert (holder[0].weight == 0).float().mean() < 0.05


def test_selection_counts_and_fraction() -> None:
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    total = sum(p.numel() for p in model.parameters())
    n_norm = 5 * 2 * 16  # ln_1, ln_2 per block + ln_f, weight and bias each
    sel = select_trainable(model, "norms")
    assert sel.trainable == n_norm and sel.total == total
    assert sel.fraction == pytest.approx(n_norm / total)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_norm

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    biases = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("bias") and "ln" not in n
    )
    sel = select_trainable(model, ("biases", "head", "masklora"), rank=2)
    linears = [(16, 16)] * 4 + [(64, 16), (16, 64)]  # q k v out fc_in fc_out per block
    n_lora = 2 * sum(2 * (o + i) for o, i in linears)
    assert sel.groups == {"biases": biases, "head": 32 * 16, "masklora": n_lora}
    assert sel.trainable == biases + 32 * 16 + n_lora
    assert sel.total == total  # adapters are not counted in the model's size


def test_parse_params_validation() -> None:
    assert parse_params("biases, norms,masklora") == ("biases", "norms", "masklora")
    with pytest.raises(ValueError, match="params"):
        parse_params("biases,weights")
    with pytest.raises(ValueError, match="one adapter kind"):
        parse_params(["masklora", "scalelora"])
    with pytest.raises(ValueError, match="full"):
        parse_params("full,lora")
    with pytest.raises(ValueError, match="kind"):
        AdapterLinear(nn.Linear(2, 2), "dora")


def test_warmup_then_linear_decay() -> None:
    factors = [linear_warmup_decay(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
