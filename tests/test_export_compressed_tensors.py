"""compressed-tensors checkpoints: exact field layout and a bitwise round trip for both formats."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from prunekit.export import load_compressed_tensors, save_compressed_tensors


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.lm_head = nn.Linear(12, 16, bias=False)


def _sparse_model(two_four: bool) -> TinyLM:
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():
        w = model.proj.weight
        if two_four:
            keep = torch.tensor([True, False, False, True]).repeat(12, 2)
            keep[0, :4] = torch.tensor([False, False, True, False])  # a group with one non-zero
        else:
            keep = torch.rand(w.shape) > 0.7
        w.mul_(keep)
    return model


@pytest.mark.parametrize("fmt", ["sparse-bitmask", "sparse-24-bitmask"])
def test_round_trip_is_bitwise(tmp_path, fmt):
    model = _sparse_model(two_four=fmt == "sparse-24-bitmask")
    out = save_compressed_tensors(model, tmp_path / "ckpt", format=fmt)
    state = load_compressed_tensors(out)
    want = model.state_dict()
    assert set(state) == set(want)
    for name, tensor in want.items():
        assert torch.equal(state[name], tensor), name
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    sparsity = config["sparsity_config"]
    assert sparsity["format"] == fmt and sparsity["targets"] == ["Linear"]
    assert sparsity["ignore"] == ["lm_head"]
    assert sparsity["sparsity_structure"] == ("2:4" if "24" in fmt else "unstructured")
    stored = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" in stored and "proj.weight" not in stored  # ignored stays dense


def test_bitmask_field_layout(tmp_path):
    model = nn.Sequential(nn.Linear(10, 2))
    with torch.no_grad():
        model[0].weight.copy_(
            torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0, 2, 0], [0, 3, 4, 0, 0, 0, 0, 0, 0, 5]])
        )
    stored = load_file(str(save_compressed_tensors(model, tmp_path) / "model.safetensors"))
    assert stored["0.shape"].tolist() == [2, 10]
    assert stored["0.compressed"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # least significant bit first: row 0 keeps columns 0 and 8, row 1 keeps 1, 2 and 9
    assert stored["0.bitmask"].dtype == torch.uint8
    assert stored["0.bitmask"].tolist() == [[0b00000001, 0b01], [0b00000110, 0b10]]
    assert stored["0.row_offsets"].tolist() == [0, 2]
    assert "0.bias" in stored


def test_two_four_layout_and_rejects_denser_weights(tmp_path):
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 7.0, 0.0, 0.0]]))
    stored = load_file(
        str(
            save_compressed_tensors(model, tmp_path, format="sparse-24-bitmask")
            / "model.safetensors"
        )
    )
    assert stored["0.shape"].tolist() == [[1], [4]]
    assert stored["0.compressed"].tolist() == [[0.0, 7.0]]  # two slots, one explicit zero
    assert stored["0.bitmask"].tolist() == [[0b0011]]
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    with pytest.raises(ValueError, match="model: '0.weight' is not 2:4 sparse"):
        save_compressed_tensors(model, tmp_path / "b", format="sparse-24-bitmask")


def test_bad_inputs_name_the_argument_or_file(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="format: expected one of"):
        save_compressed_tensors(model, tmp_path, format="csr")
    with pytest.raises(ValueError, match="ignore: no module named 'head'"):
        save_compressed_tensors(model, tmp_path, ignore=["head"])
    with pytest.raises(FileNotFoundError, match="directory: no config.json"):
        load_compressed_tensors(tmp_path / "missing")
    out = save_compressed_tensors(model, tmp_path / "ok")
    stored = load_file(str(out / "model.safetensors"))
    stored["0.compressed"] = stored["0.compressed"][:-1]
    from safetensors.torch import save_file

    save_file(stored, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match=r"0.compressed holds \d+ values, the bitmask keeps"):
        load_compressed_tensors(out)
    (out / "config.json").write_text(json.dumps({"model_type": "x"}))
    with pytest.raises(ValueError, match="does not describe a compressed-tensors"):
        load_compressed_tensors(out)


def test_transformers_llama_with_tied_head_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=32,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand(p.shape) > 0.5)
    out = save_compressed_tensors(model, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" in config
    stored = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.bitmask" in stored
    state = load_compressed_tensors(out)
    fresh = transformers.LlamaForCausalLM(cfg)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    fresh.tie_weights()
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
