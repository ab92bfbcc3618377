"""to_sparse: sparse kernels replace masked layers only where the (injected) clock says they win."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.export import SparseConv1x1, SparseLinear, csr_bytes_ceiling, is_2_4_sparse, to_sparse


class ConvMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(8, 16, 1)
        self.conv = nn.Conv2d(16, 4, 3, padding=1)  # not 1x1: never a candidate
        self.fc1 = nn.Linear(4 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, 10, bias=False)

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.pw(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _masks(model, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MaskSet(
        {
            n: torch.rand(p.shape, generator=g) >= sparsity
            for n, p in model.named_parameters()
            if n.endswith("weight")
        }
    )


def _masked_copy(model, masks):
    import copy

    ref = copy.deepcopy(model)
    masks.apply(ref)
    return ref.eval()


def _sparse_wins(module, _inputs):
    """Sparse modules take 1 s, dense ones 10 s: every candidate converts."""
    return (
        1.0 if any(isinstance(m, (SparseLinear, SparseConv1x1)) for m in module.modules()) else 10.0
    )


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_converted_model_equals_masked_dense(dtype, atol):
    torch.manual_seed(0)
    model = ConvMLP().to(dtype)
    masks = _masks(model, 0.8)
    x = torch.randn(3, 8, 5, 5, dtype=dtype)
    sparse, report = to_sparse(model, masks, example_inputs=x, timer=_sparse_wins)
    assert report.converted == ["pw", "fc1", "fc2"]
    assert isinstance(sparse.pw, SparseConv1x1) and isinstance(sparse.fc1, SparseLinear)
    assert isinstance(sparse.conv, nn.Conv2d)
    assert isinstance(model.fc1, nn.Linear)  # the input model is untouched
    assert sparse.fc1.weight.crow_indices().dtype == torch.int32
    assert sparse.fc1.nnz == int(masks["fc1.weight"].sum())
    with torch.no_grad():
        want = _masked_copy(model, masks)(x)
        got = sparse(x)
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
        # one row takes the matrix-vector kernel: same numbers
        row = torch.randn(1, 100, dtype=dtype)
        torch.testing.assert_close(
            sparse.fc1(row), _masked_copy(model, masks).fc1(row), atol=atol, rtol=0
        )
    assert report.dense_ms == 10_000.0 and report.sparse_ms == 1_000.0 and not report.reverted
    assert report.layers[0].speedup == 10.0
    as_dict = report.to_dict()
    assert as_dict["layers"][0]["speedup"] == 10.0 and as_dict["layers"][0]["format"] == "csr"


def test_layer_where_sparse_is_slower_stays_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    masks = _masks(model, 0.9)

    def timer(module, _inputs):
        if isinstance(module, SparseLinear):
            return 3.0 if module.in_features == 64 else 1.0  # layer "2" is slower sparse
        return 2.0

    sparse, report = to_sparse(model, masks, batch_size=4, timer=timer)
    assert isinstance(sparse[0], SparseLinear) and isinstance(sparse[2], nn.Linear)
    decision = {d.name: d for d in report.layers}
    assert (decision["0"].format, decision["2"].format) == ("csr", "dense")
    assert decision["2"].reason == "dense is faster"
    assert (decision["2"].dense_ms, decision["2"].sparse_ms) == (2000.0, 3000.0)
    x = torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), _masked_copy(model, masks)(x), atol=1e-5, rtol=0)


def test_end_to_end_slower_reverts_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    masks = _masks(model, 0.9)

    def timer(module, _inputs):
        if isinstance(module, SparseLinear):
            return 1.0
        if isinstance(module, nn.Sequential):  # the whole model: converted is slower
            return 5.0 if isinstance(module[0], SparseLinear) else 4.0
        return 2.0

    sparse, report = to_sparse(model, masks, example_inputs=torch.randn(2, 16), timer=timer)
    assert report.reverted and report.converted == []
    assert all(isinstance(m, nn.Linear) for m in (sparse[0], sparse[2]))
    assert "reverted" in report.layers[0].reason
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), _masked_copy(model, masks)(x), atol=1e-6, rtol=0)


def test_without_masks_zeros_decide_and_dense_layers_are_skipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[torch.rand(16, 16) < 0.75] = 0
    sparse, report = to_sparse(model, batch_size=2, timer=_sparse_wins, inplace=True)
    assert sparse is model and report.converted == ["0"]
    assert report.layers[1].reason == "sparsity below min_sparsity=0.5"
    assert str(report).splitlines()[0] == "to_sparse on cpu, batch 2, 1 thread(s) (measured)"


def test_bad_arguments_name_themselves():
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        to_sparse(model, device="meta")
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        to_sparse(model, batch_size=0)
    with pytest.raises(ValueError, match=r"masks: 'weight' has shape \(2, 2\)"):
        to_sparse(model, {"weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="masks: 'fc.weight' is not a parameter of the model"):
        to_sparse(model, {"fc.weight": torch.ones(4, 4, dtype=torch.bool)})


def test_two_four_detection_and_bytes_ceiling():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3], [1, 1, 0, 0, 0, 1, 1, 0]])
    assert is_2_4_sparse(w)
    w[0, 1] = 5
    assert not is_2_4_sparse(w)
    assert not is_2_4_sparse(torch.ones(2, 6))
    assert csr_bytes_ceiling(0.1) == pytest.approx(5.0)
    assert csr_bytes_ceiling(0.05) == pytest.approx(10.0)
    assert csr_bytes_ceiling(0.1, index_bytes=8) == pytest.approx(4.0 / 1.2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_two_four_matches_masked_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128)).half().cuda()
    pattern = torch.tensor([True, True, False, False])
    masks = {
        "0.weight": pattern.repeat(512, 256 // 4).cuda(),
        "2.weight": pattern.repeat(128, 512 // 4).cuda(),
    }
    sparse, report = to_sparse(model, masks, device="cuda", batch_size=64, timer=_two_four_wins)
    assert set(report.converted) <= {"0", "2"}
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    ref = _masked_copy(model, MaskSet(masks))
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), ref(x), atol=2e-2, rtol=1e-2)


def _two_four_wins(module, _inputs):
    from torch.sparse import SparseSemiStructuredTensor

    semi = any(isinstance(p, SparseSemiStructuredTensor) for p in module.parameters())
    return 1.0 if semi else 2.0
