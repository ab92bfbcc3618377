"""Network Slimming and MaskSparsity regularisers; depth pruning by block influence."""

from __future__ import annotations

import pytest
import torch

import prunekit.structured as st
from prunekit.models import create_model


def test_network_slimming_penalty_and_subgradient():
    torch.manual_seed(0)
    model = create_model("vgg11", width_mult=0.125)
    reg = st.NetworkSlimming(model, lam=1e-2)
    gammas = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    want = 1e-2 * sum(g.abs().sum() for g in gammas)
    torch.testing.assert_close(reg.penalty(), want)
    model.zero_grad()
    reg.penalty().backward()
    grads = [g.grad.clone() for g in gammas]
    model.zero_grad()
    for g in gammas:
        g.grad = torch.zeros_like(g)
    reg.after_backward()
    for g, want_grad in zip(gammas, grads):
        torch.testing.assert_close(g.grad, want_grad)


def test_slimming_drives_gammas_down_in_a_loop():
    torch.manual_seed(0)
    model = create_model("vgg11", width_mult=0.125)
    reg = st.NetworkSlimming(model, lam=1e-1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = sum(p.abs().sum() for p in reg.scales.values()).item()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        reg.after_backward()
        opt.step()
    after = sum(p.abs().sum() for p in reg.scales.values()).item()
    assert after < before


def test_mask_sparsity_only_touches_selected_channels():
    torch.manual_seed(0)
    model = create_model("resnet20", width=8)
    x = torch.randn(1, 3, 8, 8)
    groups, pruned, _ = st.plan_pruning(model, x, 0.5, "bn_scale")
    reg = st.MaskSparsity.from_plan(model, groups, pruned, lam=1.0)
    assert reg.selected
    model.zero_grad()
    reg.penalty().backward()
    for name, mask in reg.selected.items():
        grad = reg.scales[name].grad
        assert torch.equal(grad != 0, mask)  # sign(gamma) on selected entries, zero elsewhere
    with pytest.raises(ValueError, match="selected"):
        st.MaskSparsity(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})


def test_block_influence_and_depth_pruning():
    torch.manual_seed(0)
    model = create_model("gpt", n_layer=4, n_embd=32, n_head=4, block_size=16)
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():  # make block 2 an identity: its influence is exactly 0
        model.blocks[2].attn.out_proj.weight.zero_()
        model.blocks[2].attn.out_proj.bias.zero_()
        model.blocks[2].mlp.fc_out.weight.zero_()
        model.blocks[2].mlp.fc_out.bias.zero_()
    scores = st.block_influence(model, ids, "blocks")
    assert scores.shape == (4,) and scores[2].abs() < 1e-6 and (scores[[0, 1, 3]] > 0).all()
    with torch.no_grad():
        before = model(ids)
    small, dropped = st.prune_depth(model, ids, n_drop=1)
    assert dropped == [2] and len(small.blocks) == 3 and small.config.n_layer == 3
    torch.testing.assert_close(small(ids), before)


def test_depth_on_resnet_and_hf_llama():
    model = create_model("resnet20", width=8)
    x = torch.randn(1, 3, 8, 8)
    scores = st.block_influence(model, x, "layer2")
    assert torch.isinf(scores[0])  # the downsampling block changes shape: it cannot go
    small, dropped = st.prune_depth(model, x, n_drop=1, container="layer2")
    assert 0 not in dropped and len(small.layer2) == 2
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
    )
    llama = transformers.LlamaForCausalLM(cfg)
    ids = {"input_ids": torch.randint(0, 32, (1, 6))}
    llama, dropped = st.prune_depth(llama, ids, n_drop=1)
    assert llama.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in llama.model.layers] == [0, 1]
    assert llama(**ids).logits.shape == (1, 6, 32)


def test_slimming_as_trainer_callback():
    from prunekit.training import Trainer

    torch.manual_seed(0)
    model = create_model("vgg11", width_mult=0.125)
    data = (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    reg = st.NetworkSlimming(model, lam=0.5)
    before = sum(p.abs().sum() for p in reg.scales.values()).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    Trainer(
        model, data, optimizer=opt, iterations=4, batch_size=8, device="cpu", callbacks=[reg]
    ).fit()
    after = sum(p.abs().sum() for p in reg.scales.values()).item()
    assert after < before
    small, plan = st.prune(model, data[0][:1], ratio=0.5, criterion="bn_scale")
    assert plan.macs_ratio > 2
