"""Model costs with ShrinkBench's definitions, file sizes and latency."""

from __future__ import annotations

import torch
from torch import nn

import prunekit
from prunekit.core.metrics import (
    count_nonzeros,
    file_sizes,
    layer_costs,
    measure_latency,
    model_costs,
    pq_indices,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),  # out (4, 10): 40 * 2 * 3 = 240 MACs
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(40, 5),  # 40 * 5 = 200 MACs
    )


def test_dense_costs_by_hand():
    net = _net()
    rows = layer_costs(net, torch.randn(1, 2, 10))
    assert [(r.name, r.dense_macs, r.nonzero_macs) for r in rows] == [
        ("0", 240, 240),
        ("3", 200, 200),
    ]
    costs = model_costs(net, torch.randn(1, 2, 10))
    assert costs.params == (4 * 2 * 3 + 4) + (40 * 5 + 5)
    assert costs.speedup == 1.0


def test_sparse_costs_scale_with_layer_density():
    net = _net()
    with torch.no_grad():
        net[0].weight.view(-1)[:12] = 0  # half of 24 weights
        net[3].weight.view(-1)[:150] = 0  # 3/4 of 200 weights
    costs = model_costs(net, torch.randn(1, 2, 10))
    assert [r.nonzero_macs for r in costs.layers] == [120, 50]
    assert costs.dense_macs == 440 and costs.nonzero_macs == 170
    assert costs.speedup == 440 / 170
    nnz = 12 + 4 + 50 + 5
    assert count_nonzeros(net) == nnz == costs.nonzeros
    assert costs.compression == costs.params / nnz
    data = costs.to_dict()
    assert data["layers"][1]["sparsity"] == 0.75


def test_attention_products_are_counted_dense():
    from prunekit.models import create_model

    torch.manual_seed(0)
    gpt = create_model("gpt", vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)
    rows = layer_costs(gpt, torch.zeros(1, 8, dtype=torch.long))
    attention = [r for r in rows if r.kind == "attention"]
    assert len(attention) == 1
    # QK^T and AV: 2 * heads * L * L * head_dim
    assert attention[0].dense_macs == attention[0].nonzero_macs == 2 * 2 * 8 * 8 * 8
    q = next(r for r in rows if r.name.endswith("attn.q_proj"))
    assert q.dense_macs == 8 * 16 * 16


def test_file_sizes_shrink_with_sparsity_and_latency_positive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    dense = file_sizes(net)
    prunekit.prune(net, 0.9)
    sparse = file_sizes(net)
    assert sparse["dense_bytes"] == dense["dense_bytes"]
    assert sparse["compressed_bytes"] < 0.5 * dense["dense_bytes"]
    assert measure_latency(net, torch.randn(1, 64), repeats=3, warmup=1) > 0


def test_pq_indices_per_layer():
    net = _net()
    result = pq_indices(net)
    if result is None:  # prunekit.core.pqi not installed
        return
    assert set(result["layers"]) == {"0.weight", "3.weight"}
    # PQ Index (p=0.5, q=1) of a vector w: 1 - d^(1/q - 1/p) ||w||_p / ||w||_q
    w = net[3].weight.detach().flatten().double()
    d = w.numel()
    expected = 1 - d ** (1 - 2) * w.abs().sqrt().sum() ** 2 / w.abs().sum()
    assert abs(result["layers"]["3.weight"] - float(expected)) < 1e-9
