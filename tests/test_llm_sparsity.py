"""Exact sparsity per layer, per row and per N:M group on tiny GPT-2, OPT and LLaMA models."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from _llm_tiny import load_tiny, save_tiny, tokens  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.adapters import is_transposed  # noqa: E402

FAMILIES = ["gpt2", "opt", "llama"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {f: save_tiny(f, root / f) for f in FAMILIES}


def _as_out_in(model, name: str, tensor: torch.Tensor) -> torch.Tensor:
    module = model.get_submodule(name[: -len(".weight")])
    return tensor.t() if is_transposed(module) else tensor


def _check_zeros(model, masks):
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_exact_sparsity_per_layer(model_dirs, family, method):
    model = load_tiny(model_dirs[family])
    masks, report = prune_llm(
        model,
        method,
        0.6,
        calibration=tokens(),
        nsamples=8,
        seqlen=32,
        batch_size=4,
        progress=False,
    )
    assert len(masks) == {"gpt2": 8, "opt": 12, "llama": 14}[family]
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.6 * mask.numel()), name
        assert report["layers"][name]["sparsity"] == pytest.approx(1 - mask.float().mean().item())
    _check_zeros(model, masks)
    # Embeddings and the LM head are left dense.
    assert not any("embed" in n or "wte" in n or "lm_head" in n for n in masks)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_exact_sparsity_per_row(model_dirs, family, method):
    model = load_tiny(model_dirs[family])
    masks, _ = prune_llm(
        model,
        method,
        0.5,
        calibration=tokens(),
        nsamples=8,
        seqlen=32,
        batch_size=4,
        magnitude_scope="row",
        progress=False,
    )
    for name, mask in masks.items():
        rows = _as_out_in(model, name, mask)
        pruned = (~rows).sum(1)
        assert torch.all(pruned == int(rows.shape[1] * 0.5)), name
    _check_zeros(model, masks)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_exact_nm_groups(model_dirs, family, method, pattern):
    if pattern == "4:8" and family != "llama":
        pytest.skip("4:8 checked on one family to keep the suite fast")
    n, m = map(int, pattern.split(":"))
    model = load_tiny(model_dirs[family])
    masks, report = prune_llm(
        model,
        method,
        0.5,
        pattern,
        calibration=tokens(),
        nsamples=8,
        seqlen=32,
        batch_size=4,
        progress=False,
    )
    assert report["pattern"] == pattern
    for name, mask in masks.items():
        rows = _as_out_in(model, name, mask)
        groups = rows.reshape(rows.shape[0], -1, m).sum(-1)
        assert torch.all(groups == n), name
    _check_zeros(model, masks)


def test_wanda_leaves_kept_weights_untouched(model_dirs):
    model = load_tiny(model_dirs["llama"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks, _ = prune_llm(
        model, "wanda", 0.5, calibration=tokens(), nsamples=8, seqlen=32, progress=False
    )
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(p[masks[name]], before[name][masks[name]])
        else:
            assert torch.equal(p, before[name]), name
