"""Structured pruning on architectures we did not write: Hugging Face ``transformers`` models
built from small configs, pruned at 30% and 50% with L1.

A fast subset runs by default; ``python -m pytest -m conformance tests/test_structured_conformance.py``
runs every architecture at both ratios.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

import prunekit.structured as st

transformers = pytest.importorskip("transformers")

from _conformance import check_equivalence, output, run  # noqa: E402
from _hf_zoo import ZOO, build  # noqa: E402

# The default run covers every family of failure (GQA, fused qkv, q_norm, embed_scale, relative
# bias, spatial padding, GRN, per-head SDPA bias, untraced tokens, per-stage config lists).
FAST = {
    "qwen3",
    "phi3",
    "gemma",
    "gpt2",
    "t5",
    "mobilenet_v2",
    "convnextv2",
    "swin",
    "dinov2",
    "segformer",
}

# Where save_pretrained + from_pretrained reproduces the pruned model exactly: the pruned widths
# are uniform across layers and satisfy the config's own relations (hidden divisible by heads
# where head_dim is not a config field), and no buffer or attribute is derived from a pruned
# size (Gemma's embed_scale, T5's model_dim rescaling of tied logits).
HF_RELOAD = {
    0.5: {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gpt2",
        "gpt_neox",
        "opt",
        "falcon",
        "stablelm",
        "bert",
        "roberta",
        "distilbert",
        "electra",
        "bart",
        "convnext",
        "convnextv2",
        "vit",
        "deit",
        "dinov2",
    },
    0.3: {"mistral", "qwen3"},
}


def _cases():
    for name in ZOO:
        for ratio in (0.3, 0.5):
            marks = () if name in FAST and ratio == 0.5 else (pytest.mark.conformance,)
            yield pytest.param(name, ratio, id=f"{name}-{ratio}", marks=marks)


@pytest.mark.parametrize("name,ratio", list(_cases()))
def test_architecture_conforms(name, ratio):
    model, inputs, kind = build(name)
    res = run(model, inputs, kind, ratio, hf=name in HF_RELOAD[ratio])
    assert res.prunes and res.macs_ratio > 1.2 and res.params_ratio > 1.2, res
    assert res.trains, "no finite gradients after pruning"
    assert res.equivalent is not False, res.error
    assert res.load_pruned, "load_pruned does not reproduce the pruned outputs"
    if name in HF_RELOAD[ratio]:
        assert res.hf_reload, "from_pretrained does not reproduce the pruned outputs"
    if kind == "causal":
        assert res.generates
    assert res.warnings == []  # nothing silently frozen


# ---- the failures this suite found, one focused test each ----


class PadBeforeConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 8, 3)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.b(torch.nn.functional.pad(torch.relu(self.a(x)), (1, 1, 1, 1)))
        return self.c(torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 8)))  # 8 constant channels


def test_spatial_pad_keeps_channels_and_channel_pad_adds_fixed_ones():
    torch.manual_seed(0)
    small, _ = st.prune(PadBeforeConv(), torch.randn(1, 3, 8, 8), ratio=0.5)
    assert small.a.out_channels == 4 and small.b.in_channels == 4
    # Padding the channel axis appends 8 constant channels: b's own channels still shrink, the
    # constant ones stay, so c reads 4 + 8.
    assert small.b.out_channels == 4 and small.c.in_channels == 12
    assert small(torch.randn(1, 3, 8, 8)).shape == (1, 4, 6, 6)


def test_mobilenet_tf_padding_prunes_fully():
    model, inputs, _ = build("mobilenet_v1")
    assert model.config.tf_padding
    _, plan = st.prune(model, inputs, ratio=0.5)
    assert plan.macs_ratio > 3


class HeadBias(nn.Module):
    def __init__(self, heads: int = 4, dim: int = 8, seq: int = 5) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim
        self.qkv = nn.Linear(16, 3 * heads * dim)
        self.bias = nn.Parameter(torch.randn(heads, seq, seq))
        self.proj = nn.Linear(heads * dim, 16)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


def test_sdpa_per_head_mask_is_sliced_with_its_heads():
    torch.manual_seed(0)
    model = HeadBias().eval()
    x = torch.randn(1, 5, 16)
    groups, pruned, keep = st.plan_pruning(model, x, {"qkv": 0.5})
    small = copy.deepcopy(model)
    st.shrink(small, keep)
    heads = sorted(set(range(4)) - set(pruned[0].tolist()))
    assert small.num_heads == 2 and small.bias.shape == (2, 5, 5)
    assert torch.equal(small.bias, model.bias[heads])
    assert check_equivalence(model, {"x": x}, 0.5) is True


def test_t5_head_attributes_follow_the_weights():
    model, inputs, _ = build("t5")
    model, _ = st.prune(model, inputs, ratio=0.5)
    for m in model.modules():
        if type(m).__name__ == "T5Attention":
            assert m.n_heads == 2 and m.inner_dim == m.n_heads * m.key_value_proj_dim
            assert m.q.out_features == m.inner_dim
    assert model.config.num_heads == 2 and model.config.d_ff == 32


class Spectral(nn.Module):
    """A block the tracer has no rule for (einsum)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return torch.einsum("bc,cd->bd", x, self.w)


class WithSpectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.spec = Spectral()
        self.fc2 = nn.Linear(8, 16)
        self.fc3 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(self.spec(torch.relu(self.fc1(x))))))


def test_ignore_lets_an_untraceable_module_through():
    x = torch.randn(2, 4)
    with pytest.raises(st.UnsupportedOperationError, match="einsum"):
        st.prune(WithSpectral(), x, ratio=0.5)
    small, _ = st.prune(WithSpectral(), x, ratio=0.5, ignore=["spec"])
    assert small.fc1.out_features == 8 and small.spec.w.shape == (8, 8)
    assert small.fc2.out_features == 8 and small(x).shape == (2, 2)


def test_convnextv2_grn_prunes_and_can_be_ignored():
    model, inputs, _ = build("convnextv2")
    _, plan = st.prune(copy.deepcopy(model), inputs, ratio=0.5)
    assert plan.macs_ratio > 2.5
    grns = [n for n, m in model.named_modules() if n.endswith(".grn")]
    small, _ = st.prune(model, inputs, ratio=0.5, ignore=grns)
    layer = small.convnextv2.encoder.stages[0].layers[0]
    assert layer.pwconv1.out_features == layer.grn.weight.shape[-1] == 64  # kept whole


def test_qwen3_heads_are_removed_despite_shared_head_norms():
    model, inputs, _ = build("qwen3")
    small, _ = st.prune(model, inputs, ratio=0.5)
    attn = small.model.layers[0].self_attn
    assert small.config.num_attention_heads == 2 and small.config.num_key_value_heads == 1
    assert attn.q_proj.out_features == 2 * 8 and attn.q_norm.weight.shape == (8,)


class HeadNorm(nn.Module):
    """Attention with torch's RMSNorm over head_dim on queries and keys (one weight, all heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 8
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, 32) for _ in range(3))
        self.q_norm, self.k_norm = nn.RMSNorm(8), nn.RMSNorm(8)
        self.o_proj = nn.Linear(32, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def test_torch_rms_norm_over_head_dim_keeps_heads_apart():
    torch.manual_seed(0)
    model = HeadNorm().eval()
    x = torch.randn(1, 5, 16)
    groups = st.find_groups(st.build_graph(model, x))
    heads = next(g for g in groups if ("q_proj.weight", 0) in g.members)
    assert heads.prunable and heads.size == 4 and heads.unit == 8
    assert check_equivalence(model, {"x": x}, 0.5) is True
    _, _, keep = st.plan_pruning(model, x, {heads.name: 0.5})
    small = copy.deepcopy(model)
    st.shrink(small, keep)
    assert small.q_proj.out_features == 16 and small.q_norm.weight.shape == (8,)


def test_phi3_config_reloads_with_from_pretrained(tmp_path):
    model, inputs, _ = build("phi3")
    small, _ = st.prune(model, inputs, ratio=0.5)
    cfg = small.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 32)
    small.save_pretrained(tmp_path)
    again = type(small).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(output(again, inputs), output(small, inputs))


def test_uniform_layers_gives_every_layer_one_width():
    model, inputs, _ = build("llama")
    small, _ = st.prune(model, inputs, ratio=0.4, mode="global", uniform_layers=True)
    widths = {layer.mlp.up_proj.out_features for layer in small.model.layers}
    heads = {layer.self_attn.k_proj.out_features for layer in small.model.layers}
    assert len(widths) == 1 and len(heads) == 1
    assert small.config.intermediate_size == widths.pop()


@pytest.mark.parametrize("name", ["gemma", "gemma2"])
def test_gemma_embed_scale_survives_load_pruned(tmp_path, name):
    model, inputs, _ = build(name)
    small, _ = st.prune(model, inputs, ratio=0.5)
    scale = small.model.embed_tokens.embed_scale.item()
    assert scale == pytest.approx(math.sqrt(32))  # the unpruned hidden size
    st.save_pruned(small, tmp_path)
    again = st.load_pruned(tmp_path).eval()
    assert again.model.embed_tokens.embed_scale.item() == scale
    with torch.no_grad():
        assert torch.equal(output(again, inputs), output(small, inputs))


def test_dinov2_mask_token_is_sliced():
    model, inputs, _ = build("dinov2")
    small, _ = st.prune(model, inputs, ratio=0.5)
    assert small.dinov2.embeddings.mask_token.shape == (1, 16)
    masked = torch.zeros(1, 16, dtype=torch.bool)
    masked[0, 3] = True
    with torch.no_grad():
        assert small(**inputs, bool_masked_pos=masked).logits.shape == (1, 3)


def test_segformer_stage_widths_are_updated_in_the_config():
    model, inputs, _ = build("segformer")
    small, _ = st.prune(model, inputs, ratio=0.5)
    assert small.config.hidden_sizes == [8, 16]


@dataclasses.dataclass
class WidthConfig:
    width: int = 16


class ReadsConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = WidthConfig()
        self.fc = nn.Linear(4, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.fc(x)).reshape(-1, self.config.width)  # a size read from the config
        return self.head(h)


def test_verification_names_the_stale_config_field():
    with pytest.raises(RuntimeError, match=r"config\.width=16 \(pruned to 8\)"):
        st.prune(ReadsConfig(), torch.randn(2, 4), ratio=0.5)


def test_fewer_channels_than_asked_warns_with_the_group_and_reason():
    from prunekit.models import create_model

    model = create_model("resnet20", width=8)  # option A: zero-padded shortcuts
    with pytest.warns(st.StructuredPruningWarning, match=r"'layer2\.0\.conv2'.*zero-padded"):
        st.prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    mlp = create_model("mlp", hidden=(16, 8))
    with pytest.warns(st.StructuredPruningWarning, match=r"'net\.1'.*min_channels=12"):
        st.prune(mlp, torch.randn(1, 64), ratio=0.5, min_channels=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", st.StructuredPruningWarning)
        st.prune(create_model("mlp", hidden=(16, 8)), torch.randn(1, 64), ratio=0.5)


def test_load_pruned_rebuilds_from_the_unpruned_config(tmp_path):
    model, inputs, _ = build("llama")
    small, _ = st.prune(model, inputs, ratio=0.3)
    assert small.config.hidden_size == 23 and small.config.num_attention_heads == 4
    # the config class refuses it (huggingface_hub raises its own validation error type)
    with pytest.raises(Exception, match="multiple|divisible"):
        type(small.config).from_dict(small.config.to_dict())
    st.save_pruned(small, tmp_path)
    again = st.load_pruned(tmp_path).eval()
    assert again.config.hidden_size == 23
    with torch.no_grad():
        assert torch.equal(output(again, inputs), output(small, inputs))
