"""`prunekit prune-llm --compressed-tensors`: a 2:4 checkpoint in the compressed-tensors layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.export import load_compressed_tensors

transformers = pytest.importorskip("transformers")


def test_prune_llm_writes_a_two_four_compressed_tensors_folder(tmp_path, capsys):
    from _llm_tiny import save_tiny

    src = save_tiny("opt", tmp_path / "dense")
    out = tmp_path / "sparse"
    args = ["prune-llm", str(src), "--method", "magnitude", "--pattern", "2:4"]
    assert main([*args, "--out", str(out), "--compressed-tensors", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    folder = out / "compressed-tensors"
    assert summary["compressed_tensors"] == str(folder)
    sparsity = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert sparsity["sparsity_config"]["format"] == "sparse-24-bitmask"
    assert "lm_head" in sparsity["sparsity_config"]["ignore"]
    stored = load_file(str(folder / "model.safetensors"))
    assert "model.decoder.layers.0.fc1.compressed" in stored
    pruned = transformers.AutoModelForCausalLM.from_pretrained(out)
    state = load_compressed_tensors(folder)
    for name, tensor in pruned.state_dict().items():
        if name in state:
            assert torch.equal(state[name], tensor), name
    assert set(pruned.state_dict()) - set(state) <= {"lm_head.weight"}  # tied to the embeddings
