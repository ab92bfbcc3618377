"""Removing channels gives exactly the output of the model with those channels zeroed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models import create_model
from structured_helpers import (
    check_equivalent,
)


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics so that zeroing and removal are really compared."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class Branchy(nn.Module):
    """Concat, split, chunk, grouped + depthwise convolutions and a channel shuffle."""

    def __init__(self, group_norm: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.gn = nn.GroupNorm(4, 12) if group_norm else nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = self.grouped(y)
        n, c, h, w = y.shape  # channel shuffle written by hand
        y = y.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.dw(y)
        left, right = torch.chunk(y, 2, dim=1)
        y = left * torch.sigmoid(right)
        y = F.relu(self.gn(self.pw(y)))
        y = F.adaptive_avg_pool2d(y, 4)
        return self.fc(torch.flatten(y, 1))


class SplitMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        a, b = torch.chunk(self.fc1(x), 2, dim=-1)
        h = F.gelu(a) + b
        return self.out(self.fc2(h) + h)


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("mlp", {"hidden": (32, 16)}, (2, 64)),
        ("lenet5", {}, (2, 1, 28, 28)),
        ("cnn1d", {"channels": 8}, (2, 40)),
        ("resnet20", {"width": 8}, (2, 3, 16, 16)),
        ("resnet20", {"width": 8, "option": "B"}, (2, 3, 16, 16)),
        ("vgg11", {"width_mult": 0.125}, (2, 3, 32, 32)),
        ("wrn16", {"widen": 1}, (2, 3, 16, 16)),
    ],
)
def test_zoo_equivalence(name, kwargs, shape):
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name, **kwargs))
    check_equivalent(model, torch.randn(shape), ratio=0.5)


def test_branchy_equivalence():
    torch.manual_seed(0)
    model = _randomize_bn(Branchy())
    small = check_equivalent(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    # grouped conv keeps 4 balanced groups; depthwise groups follow its channels
    assert small.grouped.groups == 4 and small.grouped.in_channels % 4 == 0
    assert small.dw.groups == small.dw.in_channels == small.grouped.out_channels
    assert small.pw.in_channels * 2 == small.dw.out_channels


def test_group_norm_keeps_groups_balanced():
    """GroupNorm statistics change with fewer channels, so only validity is checked here."""
    import prunekit.structured as st

    torch.manual_seed(0)
    model = Branchy(group_norm=True)
    x = torch.randn(2, 3, 8, 8)
    small, _ = st.prune(model, x, ratio=0.5)
    assert small.gn.num_channels % small.gn.num_groups == 0
    assert small.gn.num_channels < 12
    assert small(x).shape == (2, 5)


def test_split_residual_equivalence():
    torch.manual_seed(0)
    check_equivalent(SplitMLP(), torch.randn(3, 10), ratio=0.5)


def test_gpt_heads_and_mlp_equivalence():
    """Whole heads and MLP channels of the zoo GPT (the residual stream stays, LayerNorm is exact)."""
    torch.manual_seed(0)
    model = create_model("gpt", n_layer=2, n_embd=32, n_head=4, block_size=16)
    x = torch.randint(0, 256, (2, 8))
    ratio = {f"blocks.{i}.{part}": 0.5 for i in range(2) for part in ("attn.k_proj", "mlp.fc_in")}
    small = check_equivalent(model, x, ratio=ratio)
    assert small.blocks[0].attn.num_heads == 2
    assert small.blocks[0].attn.q_proj.out_features == 2 * small.blocks[0].attn.head_dim


def test_llama_gqa_equivalence():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config)
    x = {"input_ids": torch.randint(0, 64, (1, 8))}
    ratio = {
        f"model.layers.{i}.{part}": 0.5
        for i in range(2)
        for part in ("self_attn.k_proj", "mlp.gate_proj")
    }
    small = check_equivalent(model, x, ratio=ratio)
    attn = small.model.layers[0].self_attn
    # one key/value group of two query heads went: GQA ratio kept
    assert attn.q_proj.out_features == 2 * attn.head_dim
    assert attn.k_proj.out_features == attn.v_proj.out_features == attn.head_dim
    assert attn.num_key_value_groups == 2
    assert small.model.layers[0].mlp.gate_proj.out_features == 24


class Hourglass(nn.Module):
    """Conv, transposed conv (up-sampling), a 1-D branch via Conv1d and an embedding gate."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.up = nn.ConvTranspose2d(12, 10, 2, stride=2)
        self.up_grouped = nn.ConvTranspose2d(10, 8, 2, stride=2, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.down(x)))
        y = torch.relu(self.up(y))
        return self.head(self.up_grouped(y))


def test_conv_transpose_equivalence():
    torch.manual_seed(0)
    small = check_equivalent(_randomize_bn(Hourglass()), torch.randn(2, 3, 8, 8), ratio=0.5)
    # the grouped transposed conv couples channel i of both groups: 5 pairs -> 3 pairs
    assert small.up.in_channels == 6 and small.up.out_channels == 6
    assert small.up_grouped.groups == 2 and small.up_grouped.out_channels == 4


def _cbr(cin, cout, k=1, groups=1, relu=True):
    layers = [
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split, a depthwise-separable branch, concat, channel shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            _cbr(half, half), _cbr(half, half, 3, groups=half, relu=False), _cbr(half, half)
        )

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return F.channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class MiniShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


class MiniDenseNet(nn.Module):
    """DenseNet-style growth by concatenation, then a U-Net-like up-sampling skip."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8, 3)
        self.grow1 = _cbr(8, 6, 3)
        self.grow2 = _cbr(14, 6, 3)
        self.down = nn.Conv2d(20, 12, 2, stride=2)
        self.up = nn.ConvTranspose2d(12, 10, 2, stride=2)
        self.head = nn.Conv2d(30, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.grow1(x)], 1)
        x = torch.cat([x, self.grow2(x)], 1)
        return self.head(torch.cat([x, self.up(torch.relu(self.down(x)))], 1))


@pytest.mark.parametrize("cls", [MiniShuffleNet, MiniDenseNet])
def test_shufflenet_and_densenet_equivalence(cls):
    torch.manual_seed(0)
    small = check_equivalent(_randomize_bn(cls()), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert small(torch.randn(1, 3, 8, 8)).shape[1] in (3, 4)


class MHANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 32)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = self.emb(x)
        h = h + self.mha(h, h, h, need_weights=False)[0]
        h = h + self.fc2(torch.relu(self.fc(h)))
        return self.out(h.mean(1))


def test_multihead_attention_equivalence():
    torch.manual_seed(0)
    small = check_equivalent(MHANet(), torch.randn(2, 5, 6), ratio=0.5)
    assert small.mha.embed_dim == 16 and small.mha.head_dim == 4 and small.mha.num_heads == 4
    assert small.mha.out_proj.in_features == small.mha.out_proj.out_features == 16
