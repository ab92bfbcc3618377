"""Block-wise reconstruction: each block's output error falls, sparsity is exact, all methods."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.llm import byte_tokenizer, prune_llm
from prunekit.llm.perp import reconstruct
from prunekit.models.gpt import GPT, GPTConfig

TEXT = "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump! " * 40
IDS = torch.tensor(byte_tokenizer(TEXT))


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))


@pytest.mark.parametrize(
    ("method", "params", "pattern"),
    [
        ("magnitude", "biases,norms,masklora", None),
        ("wanda", "scalelora", None),
        ("sparsegpt", "biases,norms,masklora", "2:4"),
        ("wanda", "full", None),
    ],
)
def test_reconstruction_error_falls_for_each_block(method, params, pattern) -> None:
    model = _gpt()
    masks, report = reconstruct(
        model,
        method,
        0.5,
        pattern,
        IDS,
        params,
        nsamples=8,
        seqlen=32,
        steps=25,
        lr=1e-2,
        batch_size=4,
        progress=False,
    )
    assert len(report["blocks"]) == 2
    for row in report["blocks"]:
        assert row["error_reconstructed"] < row["error_pruned"], row
        assert row["trainable"] > 0
    named = dict(model.named_parameters())
    assert masks.sparsity == pytest.approx(0.5)
    for name, keep in masks.items():
        assert torch.equal(named[name] != 0, keep), name
        if pattern == "2:4":
            assert torch.all(keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2)


def test_first_block_targets_are_the_dense_outputs() -> None:
    # Same method, same data: the first block's pruning matches prune_llm's exactly, so the
    # error right after pruning equals prune_llm's reported block-0 output error.
    dense = _gpt()
    ref = copy.deepcopy(dense)
    _, rep_ref = prune_llm(
        ref, "wanda", 0.5, calibration=IDS, nsamples=8, seqlen=32, progress=False
    )
    _, rep = reconstruct(
        dense, "wanda", 0.5, None, IDS, "norms", nsamples=8, seqlen=32, steps=2, progress=False
    )
    assert rep["blocks"][0]["error_pruned"] == pytest.approx(
        rep_ref["blocks"][0]["output_error"], rel=1e-5
    )


def test_reconstruct_hf_gpt2() -> None:
    pytest.importorskip("transformers")
    import transformers as T

    from _llm_tiny import tiny_config, tokens

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    data = tokens(8, 32)
    masks, report = reconstruct(
        model,
        "wanda",
        0.5,
        None,
        data,
        "biases,norms,masklora",
        nsamples=8,
        seqlen=32,
        steps=20,
        lr=1e-2,
        batch_size=4,
        progress=False,
    )
    named = dict(model.named_parameters())
    for name, keep in masks.items():  # GPT-2's Conv1D weights are stored (in, out)
        assert torch.equal(named[name] != 0, keep), name
    for row in report["blocks"]:
        assert row["error_reconstructed"] < row["error_pruned"]


def test_reconstruct_rejects_head_and_missing_data() -> None:
    with pytest.raises(ValueError, match="head"):
        reconstruct(_gpt(), "wanda", 0.5, None, IDS, "head", progress=False)
    with pytest.raises(ValueError, match="calibration"):
        reconstruct(_gpt(), "magnitude", 0.5, None, None, "norms", progress=False)
