"""Every zoo model and tiny Hugging Face transformers prune at 30/50/70% and still train."""

from __future__ import annotations

import pytest
import torch

import prunekit.structured as st
from prunekit.core.metrics import count_macs, count_params
from prunekit.models import create_model

ZOO = [
    ("mlp", {"hidden": (32, 16)}, (2, 64)),
    ("lenet300", {"in_features": 64}, (2, 64)),
    ("lenet5", {}, (2, 1, 28, 28)),
    ("cnn1d", {"channels": 8}, (2, 40)),
    ("resnet20", {"width": 8}, (2, 3, 8, 8)),
    ("resnet56", {"width": 4, "option": "B"}, (1, 3, 8, 8)),
    ("vgg11", {"width_mult": 0.125}, (2, 3, 32, 32)),
    ("vgg16", {"width_mult": 0.125}, (2, 3, 32, 32)),
    ("wrn16", {"widen": 1}, (2, 3, 8, 8)),
    ("vit_tiny", {"dim": 32, "depth": 2, "num_heads": 4, "image_size": 16}, (1, 3, 16, 16)),
]


def _train_step(model, inputs):
    model.train()
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    out = getattr(out, "logits", None) if not torch.is_tensor(out) else out
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _check(model, inputs, ratio):
    macs0, params0 = count_macs(model, inputs), count_params(model)
    small, plan = st.prune(model, inputs, ratio=ratio)
    assert plan.macs_before == macs0 and plan.params_before == params0
    assert plan.macs_after == count_macs(small, inputs) < macs0
    assert plan.params_after == count_params(small) < params0
    changed = [c for c in plan.changes if c.after < c.before]
    assert changed
    for c in plan.changes:  # uniform ratio: every group lost floor(ratio * size) components
        assert c.before - c.after == int(c.before * ratio + 1e-9) or c.after == 1
    _train_step(small, inputs)
    return small, plan


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name,kwargs,shape", ZOO, ids=[z[0] + str(i) for i, z in enumerate(ZOO)])
def test_zoo_prunes_and_trains(name, kwargs, shape, ratio):
    torch.manual_seed(0)
    _check(create_model(name, **kwargs), torch.randn(shape), ratio)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_gpt_prunes_and_trains(ratio):
    torch.manual_seed(0)
    model = create_model("gpt", n_layer=2, n_embd=32, n_head=4, block_size=16)
    small, _ = _check(model, torch.randint(0, 256, (2, 8)), ratio)
    attn = small.blocks[0].attn
    assert attn.num_heads * attn.head_dim == attn.q_proj.out_features
    assert small.config.n_embd == small.wte.embedding_dim


def _hf(kind):
    transformers = pytest.importorskip("transformers")
    ids = {"input_ids": torch.randint(0, 64, (1, 8))}
    common = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16)
        return transformers.GPT2LMHeadModel(cfg), ids
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=32,
            num_key_value_heads=2,
            vocab_size=64,
            max_position_embeddings=32,
            **common,
        )
        return transformers.LlamaForCausalLM(cfg), ids
    if kind == "bert":
        cfg = transformers.BertConfig(
            hidden_size=32, vocab_size=64, max_position_embeddings=32, num_labels=3, **common
        )
        return transformers.BertForSequenceClassification(cfg), ids
    cfg = transformers.ViTConfig(
        hidden_size=32, image_size=16, patch_size=4, num_labels=3, **common
    )
    return transformers.ViTForImageClassification(cfg), {"pixel_values": torch.randn(1, 3, 16, 16)}


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert", "vit"])
def test_hf_prunes_and_trains(kind, ratio):
    torch.manual_seed(0)
    model, inputs = _hf(kind)
    small, plan = _check(model, inputs, ratio)
    cfg = small.config
    hidden = 32 - int(32 * ratio)
    assert cfg.hidden_size == hidden
    heads = 4 - int(4 * ratio) if kind != "llama" else 2 * (2 - int(2 * ratio) or 1)
    assert cfg.num_attention_heads == heads
    if kind == "llama":
        assert cfg.num_key_value_heads == heads // 2
        attn = small.model.layers[0].self_attn
        assert attn.k_proj.out_features == cfg.num_key_value_heads * attn.head_dim
