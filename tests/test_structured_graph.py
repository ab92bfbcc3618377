"""Dependency graph: coupled channels found, untraceable operations reported by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit.structured as st
from prunekit.models import create_model


def _group_of(groups, tensor_name, axis=0):
    return next(g for g in groups if (tensor_name, axis) in g.members)


def test_residual_groups_resnet_option_b():
    model = create_model("resnet20", width=8, option="B")
    groups = st.find_groups(st.build_graph(model, torch.randn(1, 3, 8, 8)))
    stem = _group_of(groups, "conv1.weight")
    # the stem shares its channels with every block output of stage 1 and the next input convs
    for name in ("layer1.0.conv2.weight", "layer1.2.conv2.weight", "bn1.weight"):
        assert (name, 0) in stem.members
    assert ("layer2.0.conv1.weight", 1) in stem.members
    assert ("layer2.0.shortcut.0.weight", 1) in stem.members
    inner = _group_of(groups, "layer1.0.conv1.weight")
    assert set(inner.members) == {
        ("layer1.0.conv1.weight", 0),
        ("layer1.0.bn1.weight", 0),
        ("layer1.0.bn1.bias", 0),
        ("layer1.0.bn1.running_mean", 0),
        ("layer1.0.bn1.running_var", 0),
        ("layer1.0.conv2.weight", 1),
    }
    assert _group_of(groups, "fc.weight").prunable is False  # model outputs stay


def test_option_a_padding_channels_are_fixed():
    model = create_model("resnet20", width=8, option="A")
    groups = st.find_groups(st.build_graph(model, torch.randn(1, 3, 8, 8)))
    # stage 2 has 16 channels: 8 come from stage 1 through the padded shortcut, 8 are zero pads
    stage2 = [g for g in groups if ("layer2.1.conv2.weight", 0) in g.members]
    fixed = sum(g.size for g in stage2 if not g.prunable)
    free = sum(g.size for g in stage2 if g.prunable)
    assert (fixed, free) == (8, 8)


def test_flatten_couples_spatial_positions():
    model = create_model("lenet5")
    groups = st.find_groups(st.build_graph(model, torch.randn(1, 1, 28, 28)))
    g = _group_of(groups, "features.3.weight")
    assert g.size == 16 and g.member_index(("classifier.1.weight", 1)).shape == (16, 25)
    # channel c owns input features c*25 .. c*25+24 of the first Linear
    assert g.member_index(("classifier.1.weight", 1))[3].tolist() == list(range(75, 100))


def test_heads_are_whole_and_gqa_groups_kept():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
    )
    model = transformers.LlamaForCausalLM(cfg)
    groups = st.find_groups(st.build_graph(model, {"input_ids": torch.randint(0, 32, (1, 6))}))
    g = _group_of(groups, "model.layers.0.self_attn.q_proj.weight")
    assert g.size == 2  # two key/value groups
    assert g.member_index(("model.layers.0.self_attn.q_proj.weight", 0)).shape == (2, 16)
    assert g.member_index(("model.layers.0.self_attn.k_proj.weight", 0)).shape == (2, 8)


def test_tied_embeddings_share_one_group():
    model = create_model("gpt", n_layer=1, n_embd=16, n_head=2, block_size=8)
    model.lm_head.weight = model.wte.weight
    ids = torch.randint(0, 256, (1, 4))
    groups = st.find_groups(st.build_graph(model, ids))
    g = _group_of(groups, "wte.weight", 1)
    assert g.prunable  # lm_head input columns are the embedding columns, pruned together
    small, _ = st.prune(model, ids, ratio=0.5)
    assert small.lm_head.weight is small.wte.weight
    assert small.wte.weight.shape == (256, 8)


class FFTNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.fft.fft(self.fc(x)).real)


def test_untraceable_operation_is_named():
    with pytest.raises(st.UnsupportedOperationError, match="fft"):
        st.build_graph(FFTNet(), torch.randn(2, 8))


class LiteralSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 16)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        a, b = torch.split(self.fc(x), 8, dim=-1)  # a size written as a number
        return self.out(a * b)


def test_verification_reports_a_stale_literal():
    with pytest.raises(RuntimeError, match="no longer runs"):
        st.prune(LiteralSplit(), torch.randn(2, 4), ratio=0.5)


def test_ignore_keeps_a_layer_whole():
    model = create_model("mlp", hidden=(16, 8))
    small, _ = st.prune(model, torch.randn(1, 64), ratio=0.5, ignore=["net.1"])
    assert small.net[1].out_features == 16 and small.net[3].out_features == 4


def test_bad_arguments():
    model = create_model("mlp", hidden=(16, 8))
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="ratio"):
        st.prune(model, x, ratio=1.5)
    with pytest.raises(ValueError, match="criterion"):
        st.prune(model, x, criterion="nope")
    with pytest.raises(ValueError, match="mode"):
        st.prune(model, x, mode="nope")
    with pytest.raises(TypeError, match="model"):
        st.prune("model", x)


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.rms = nn.RMSNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.ln = nn.LayerNorm(16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        h = self.rms(self.fc1(x))
        return self.out(self.ln(h + self.fc2(torch.relu(h))))


def test_rms_and_layer_norm_shrink_with_their_channels():
    small, plan = st.prune(Norms(), torch.randn(3, 6), ratio=0.5)
    assert small.rms.normalized_shape == (8,) and small.rms.weight.shape == (8,)
    assert small.ln.normalized_shape == (8,) and small.fc2.in_features == 8
    assert small(torch.randn(3, 6)).shape == (3, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prune_on_gpu():
    model = create_model("resnet20", width=8).cuda()
    x = torch.randn(1, 3, 16, 16, device="cuda")
    small, plan = st.prune(model, x, ratio=0.5)
    assert small.conv1.weight.is_cuda and small(x).shape == (1, 10)
    assert plan.macs_ratio > 1.5
