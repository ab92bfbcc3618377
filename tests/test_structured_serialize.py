"""Save a pruned model as safetensors + JSON and rebuild it in a fresh process (no pickle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prunekit.structured as st
from prunekit.models import create_model

SRC = str(Path(st.__file__).resolve().parents[2])


def _rebuild_in_subprocess(path: Path, inputs: Path) -> torch.Tensor:
    code = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import load_file, save_file
        import prunekit.structured as st
        model = st.load_pruned({str(path)!r}).eval()
        x = load_file({str(inputs)!r})
        with torch.no_grad():
            out = model(**{{k: v for k, v in x.items()}})
        out = getattr(out, "logits", out)
        save_file({{"out": out.contiguous()}}, {str(path / "out.safetensors")!r})
        """
    )
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    from safetensors.torch import load_file

    return load_file(str(path / "out.safetensors"))["out"]


def _roundtrip(tmp_path, model, inputs: dict, factory=None, **factory_kwargs):
    from safetensors.torch import save_file

    model.eval()
    with torch.no_grad():
        want = model(**inputs)
    want = getattr(want, "logits", want)
    out = st.save_pruned(model, tmp_path / "pruned", factory, **factory_kwargs)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["format"] == "prunekit.structured/1"
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    got = _rebuild_in_subprocess(out, tmp_path / "inputs.safetensors")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # In-process load too, and it trains.
    again = st.load_pruned(out)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


def test_resnet_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", width=8, option="B")
    x = torch.randn(1, 3, 16, 16)
    model, _ = st.prune(model, x, ratio=0.5)
    _roundtrip(tmp_path, model, {"x": x}, "resnet20", width=8, option="B")


def test_gpt_roundtrip_with_dropped_block(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(n_layer=3, n_embd=32, n_head=4, block_size=16)
    model = create_model("gpt", **kwargs)
    ids = torch.randint(0, 256, (1, 8))
    model, _ = st.prune(model, ids, ratio=0.5)
    st.drop_blocks(model, "blocks", drop=[1])
    assert model.config.n_layer == 2
    _roundtrip(tmp_path, model, {"input_ids": ids}, "gpt", **kwargs)


def test_hf_llama_roundtrip(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg)
    ids = {"input_ids": torch.randint(0, 64, (1, 8))}
    model, _ = st.prune(model, ids, ratio={"model.layers.0.mlp.gate_proj": 0.5})
    model, _ = st.prune(model, ids, ratio=0.5)
    _roundtrip(tmp_path, model, ids)


def test_save_needs_a_factory_for_plain_modules(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="factory"):
        st.save_pruned(model, tmp_path / "x")
