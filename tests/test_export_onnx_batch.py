"""ONNX export with a symbolic batch axis: one file, any batch size, outputs equal PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunekit.structured as st
from prunekit.export import to_onnx
from prunekit.models import create_model

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _first_dims(path) -> list:
    import onnx

    graph = onnx.load(str(path)).graph
    return [
        (d.dim_param or d.dim_value) for v in graph.input for d in v.type.tensor_type.shape.dim[:1]
    ]


def _check_batches(path, model, make_inputs) -> None:
    """ONNX Runtime at batch 1 and 5 gives PyTorch's outputs within 1e-4.

    ``make_inputs(batch)`` returns a tensor (one positional input) or a dict of keyword inputs."""
    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    for batch in (1, 5):
        inputs = make_inputs(batch)
        with torch.no_grad():
            if isinstance(inputs, dict):
                feeds = {k: v.numpy() for k, v in inputs.items() if k in names}
                want = model(**inputs)
            else:
                feeds = {names[0]: inputs.numpy()}
                want = model(inputs)
        got = session.run(None, feeds)[0]
        want = getattr(want, "logits", want).numpy()
        assert got.shape == want.shape and got.shape[0] == batch
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _images(batch: int, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("pruned", [False, True], ids=["zoo-dense", "zoo-pruned"])
def test_zoo_cnn_exported_at_batch_2_runs_at_batch_1_and_5(tmp_path, pruned):
    torch.manual_seed(0)
    model = create_model("resnet20", width=8).eval()
    if pruned:
        model, plan = st.prune(model, torch.randn(1, 3, 16, 16), ratio=0.5)
        assert plan.macs_ratio > 1.5
    path = to_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    assert _first_dims(path) == ["batch"]
    _check_batches(path, model, _images)


def test_pruned_hf_model_exported_at_batch_2_runs_at_batch_1_and_5(tmp_path):
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _hf_zoo import VOCAB, build

    model, inputs, _ = build("bert")
    small, _ = st.prune(model, inputs, ratio=0.5)
    ids = torch.randint(1, VOCAB, (2, inputs["input_ids"].shape[1]))
    path = to_onnx(small, {"input_ids": ids}, tmp_path / "bert.onnx")
    assert _first_dims(path) == ["batch"]

    def make(batch: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(batch)
        return {"input_ids": torch.randint(1, VOCAB, (batch, ids.shape[1]), generator=gen)}

    _check_batches(path, small, make)


def test_batch_of_one_is_widened_for_tracing_and_static_export_keeps_shapes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    one = to_onnx(model, torch.randn(1, 6), tmp_path / "one.onnx")
    assert _first_dims(one) == ["batch"]
    _check_batches(one, model, lambda b: torch.randn(b, 6))
    fixed = to_onnx(model, torch.randn(2, 6), tmp_path / "fixed.onnx", dynamic_batch=False)
    assert _first_dims(fixed) == [2]


def test_dynamic_batch_needs_one_shared_first_dimension(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a.sum() + b.sum()

    with pytest.raises(ValueError, match=r"dynamic_batch: expected every tensor input to share"):
        to_onnx(Two(), (torch.randn(2, 3), torch.randn(3, 3)), tmp_path / "two.onnx")
    with pytest.raises(TypeError, match="dynamic_batch: expected True or False"):
        to_onnx(
            Two(), (torch.randn(2, 3), torch.randn(2, 3)), tmp_path / "two.onnx", dynamic_batch=1
        )
    assert not any(tmp_path.iterdir())
