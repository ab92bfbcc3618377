"""ONNX export: structurally pruned and masked models load in ONNX Runtime and match PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunekit.structured as st
from prunekit.core.masks import MaskSet
from prunekit.export import to_onnx
from prunekit.models import create_model

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


def _run_onnx(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, dict):
        feeds = {k: v.numpy() for k, v in inputs.items() if k in names}
    else:
        feeds = {names[0]: inputs.numpy()}
    return session.run(None, feeds)[0]


def _torch_out(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return getattr(out, "logits", out).numpy()


def test_structurally_pruned_resnet_round_trip(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, _ = st.prune(create_model("resnet20", width=8).eval(), x, ratio=0.5)
    path = to_onnx(small, x, tmp_path / "sub" / "resnet.onnx")
    assert path == tmp_path / "sub" / "resnet.onnx"
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet.onnx"]  # no temp left
    np.testing.assert_allclose(_run_onnx(path, x), _torch_out(small, x), atol=1e-4, rtol=0)


def test_masked_model_round_trip_keeps_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    masks = MaskSet({"0.weight": torch.rand(32, 16) > 0.8})
    masks.apply(model)
    model.train()
    x = torch.randn(3, 16)
    path = to_onnx(model, (x,), tmp_path / "masked.onnx")
    assert model.training  # mode restored
    np.testing.assert_allclose(_run_onnx(path, x), _torch_out(model.eval(), x), atol=1e-4, rtol=0)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    zeros = max(int((w == 0).sum()) for w in weights)
    assert zeros == int((~masks["0.weight"]).sum())


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_pruned_transformers_round_trip(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    inputs = {"input_ids": torch.randint(0, 64, (1, 8))}
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16)
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind == "bert":
        cfg = transformers.BertConfig(
            hidden_size=32, vocab_size=64, max_position_embeddings=32, num_labels=3, **common
        )
        model = transformers.BertForSequenceClassification(cfg)
    else:
        cfg = transformers.ViTConfig(
            hidden_size=32, image_size=16, patch_size=4, num_labels=3, **common
        )
        model = transformers.ViTForImageClassification(cfg)
        inputs = {"pixel_values": torch.randn(1, 3, 16, 16)}
    small, _ = st.prune(model.eval(), inputs, ratio=0.5)
    path = to_onnx(small, inputs, tmp_path / f"{kind}.onnx", opset=18)
    np.testing.assert_allclose(
        _run_onnx(path, inputs), _torch_out(small, inputs), atol=1e-4, rtol=0
    )
    if kind == "gpt2":
        assert small.config.use_cache is True  # restored after export


def test_bad_arguments_name_themselves(tmp_path):
    model = torch.nn.Linear(4, 2)
    with pytest.raises(TypeError, match="example_inputs: expected a tensor"):
        to_onnx(model, 3.0, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset: expected an ONNX opset version"):
        to_onnx(model, torch.randn(1, 4), tmp_path / "m.onnx", opset=2)
    with pytest.raises(IsADirectoryError, match="path: .* is a directory"):
        to_onnx(model, torch.randn(1, 4), tmp_path)


def test_large_model_weights_go_to_an_external_file_beside_the_graph(tmp_path, monkeypatch):
    import prunekit.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "_EXTERNAL_DATA_BYTES", 0)  # every model counts as large
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh())
    x = torch.randn(2, 16)
    path = to_onnx(model, x, tmp_path / "big.onnx")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "big.onnx" in files and len(files) == 2  # the graph and its weights, no temp folder
    np.testing.assert_allclose(_run_onnx(path, x), _torch_out(model.eval(), x), atol=1e-4, rtol=0)
