"""The calibration engine: adapters, calibration sources, seqlen capping, offload, true-sequential
grouping, OWL, target selection and error messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from _llm_tiny import load_tiny, save_tiny, tokens  # noqa: E402
from prunekit.llm import (  # noqa: E402
    ModelAdapter,
    UnknownArchitectureError,
    byte_tokenizer,
    prune_llm,
    register_adapter,
)
from prunekit.llm.adapters import _ADAPTERS, get_adapter  # noqa: E402
from prunekit.llm.engine import _BlockInputs, _capture, _sequential_groups  # noqa: E402
from prunekit.models.gpt import GPT, GPTConfig  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_engine")
    return {f: save_tiny(f, root / f) for f in ("llama", "bert", "gpt2")}


def _prune(model, method="wanda", **kw):
    kw.setdefault("calibration", tokens())
    kw.setdefault("nsamples", 8)
    kw.setdefault("seqlen", 32)
    kw.setdefault("batch_size", 4)
    return prune_llm(model, method, kw.pop("sparsity", 0.5), progress=False, **kw)


class _Toy(nn.Module):
    """A model no adapter knows: embeddings, a list of identical blocks, a head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.stack = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3))
        self.out = nn.Linear(16, 50)

    def forward(self, input_ids):
        x = self.emb(input_ids)
        for block in self.stack:
            x = x + block(x)
        return self.out(x)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(UnknownArchitectureError, match="register_adapter"):
        _prune(_Toy(), calibration=torch.randint(0, 50, (4, 8)), seqlen=8)
    with pytest.raises(UnknownArchitectureError, match="no nn.ModuleList"):
        _prune(nn.Sequential(nn.Linear(4, 4)), "magnitude", adapter="generic")


def test_registered_adapter_and_generic_detection():
    adapter = ModelAdapter("toy", matches=lambda m: isinstance(m, _Toy))
    register_adapter(adapter)
    try:
        model = _Toy()
        assert get_adapter(model) is adapter
        masks, report = _prune(model, calibration=torch.randint(0, 50, (4, 8)), seqlen=8)
        assert sorted(masks) == [f"stack.{i}.0.weight" for i in range(3)]
        assert report["blocks_path"] == "stack"
        with pytest.raises(ValueError, match="already registered"):
            register_adapter(adapter)
    finally:
        _ADAPTERS.pop("toy")
    masks, _ = _prune(_Toy(), "magnitude", adapter="generic")
    assert "out.weight" not in masks and masks.sparsity == pytest.approx(0.5)


def test_calibration_errors(dirs, tmp_path):
    model = load_tiny(dirs["llama"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        _prune(model, calibration=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="needs calibration"):
        _prune(model, calibration=None)
    (tmp_path / "c.txt").write_text("some text " * 100)
    with pytest.raises(ValueError, match="tokenizer"):
        _prune(model, calibration=tmp_path / "c.txt")
    with pytest.raises(ValueError, match="fewer than seqlen"):
        _prune(model, calibration=torch.arange(10))
    (tmp_path / "ds").mkdir()
    with pytest.raises(ValueError, match="save_to_disk"):
        _prune(model, calibration=tmp_path / "ds")


def test_bad_options_are_named(dirs):
    model = load_tiny(dirs["llama"])
    with pytest.raises(ValueError, match="method"):
        _prune(model, "obs")
    with pytest.raises(ValueError, match="pattern"):
        _prune(model, pattern="4:2")
    with pytest.raises(ValueError, match="owl"):
        _prune(model, pattern="2:4", owl=True)
    with pytest.raises(ValueError, match="owl"):
        _prune(model, "magnitude", owl=True)
    with pytest.raises(ValueError, match="sparsity"):
        _prune(model, sparsity=1.5)
    with pytest.raises(ValueError, match="include"):
        _prune(model, include=["nothing-matches"])


def test_seqlen_is_capped_to_fit_memory(dirs):
    model = load_tiny(dirs["llama"])
    # 2 buffers x 8 samples x 32 hidden x 4 bytes = 2048 bytes per position: 20 positions fit.
    with pytest.warns(UserWarning, match="seqlen capped from 32 to 20"):
        _, report = _prune(model, max_memory=20 * 2048)
    assert report["seqlen"] == 20 and report["seqlen_capped"]
    with pytest.warns(UserWarning, match="exceeds the model's context"):
        _, report = _prune(
            load_tiny(dirs["llama"]), seqlen=100, calibration=torch.arange(2, 90).repeat(5)
        )
    assert report["seqlen"] == 64


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_offload_gives_identical_results(dirs, offload, tmp_path):
    ref, _ = _prune(load_tiny(dirs["llama"]), "sparsegpt")
    masks, _ = _prune(load_tiny(dirs["llama"]), "sparsegpt", offload=offload, offload_dir=tmp_path)
    for name in ref:
        assert torch.equal(ref[name], masks[name])
    assert not list(tmp_path.iterdir())  # disk buffers cleaned up


def test_true_sequential_groups_follow_execution_order(dirs):
    model = load_tiny(dirs["llama"])
    adapter = get_adapter(model)
    from prunekit.llm.activations import ActivationStore
    from prunekit.llm.adapters import linear_layers

    store = ActivationStore(torch.device("cpu"))
    inputs: _BlockInputs = _capture(model, adapter, model.model.layers[0], [tokens(2)], store)
    modules = linear_layers(model.model.layers[0], "model.layers.0")
    with torch.no_grad():
        groups = _sequential_groups(
            adapter, model.model.layers[0], modules, inputs, store[0], torch.device("cpu")
        )
    short = [[n.split(".")[-1] for n in g] for g in groups]
    assert short == [
        ["q_proj", "k_proj", "v_proj"],
        ["o_proj"],
        ["gate_proj", "up_proj"],
        ["down_proj"],
    ]
    masks, _ = _prune(model, "sparsegpt", true_sequential=True)
    assert masks.sparsity == pytest.approx(0.5)


def test_owl_allocates_per_block(dirs):
    model = load_tiny(dirs["llama"])
    masks, report = _prune(model, owl=True, owl_lambda=0.1, sparsity=0.6)
    owl = report["owl"]
    assert len(owl["block_sparsity"]) == 2
    assert sum(owl["block_sparsity"]) / 2 == pytest.approx(0.6)
    # Two blocks with different outlier ratios end at s - lam and s + lam.
    assert sorted(owl["block_sparsity"]) == pytest.approx([0.5, 0.7])
    for name, mask in masks.items():
        block = int(name.split(".")[2])
        cols = mask.shape[1]
        expected = int(cols * owl["block_sparsity"][block])
        assert torch.all((~mask).sum(1) == expected)


def test_include_exclude_regex(dirs):
    model = load_tiny(dirs["llama"])
    masks, _ = _prune(model, "magnitude", exclude=[r"mlp\."])
    assert masks and all("self_attn" in n for n in masks)
    masks, _ = _prune(load_tiny(dirs["llama"]), "magnitude", include=[r"layers\.1\..*down_proj"])
    assert list(masks) == ["model.layers.1.mlp.down_proj.weight"]


def test_bert_encoder_is_pruned(dirs):
    model = load_tiny(dirs["bert"])
    masks, report = _prune(model, "sparsegpt")
    assert report["adapter"] == "bert" and len(masks) == 12
    assert masks.sparsity == pytest.approx(0.5)


def test_prunekit_gpt_with_a_text_file(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    masks, report = prune_llm(
        model,
        "sparsegpt",
        0.5,
        calibration=text,
        tokenizer=byte_tokenizer,
        nsamples=4,
        progress=False,
    )
    assert report["adapter"] == "prunekit-gpt" and report["seqlen"] == 64
    assert len(masks) == 12 and masks.sparsity == pytest.approx(0.5)
    assert all(b["output_error"] > 0 for b in report["blocks"])


def test_saved_dataset_needs_the_datasets_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed")
    from prunekit.llm.calibration import load_calibration

    (tmp_path / "dataset_info.json").write_text("{}")
    with pytest.raises(ValueError, match="'datasets' package"):
        load_calibration(tmp_path, tokenizer=byte_tokenizer, nsamples=2, seqlen=8)


def test_two_dimensional_tokens_are_used_as_given():
    from prunekit.llm.calibration import load_calibration

    ids = torch.arange(40).reshape(4, 10)
    assert torch.equal(load_calibration(ids, nsamples=3, seqlen=8), ids[:3, :8])
    stream = load_calibration(torch.arange(100), nsamples=5, seqlen=10, seed=1)
    assert stream.shape == (5, 10)
    assert torch.all(stream[:, 1:] - stream[:, :-1] == 1)  # contiguous windows
