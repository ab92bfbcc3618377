"""PERP retraining: frozen parameters untouched, sparsity kept, loss falls, save and reload."""

from __future__ import annotations

import pytest
import torch

from prunekit.llm import byte_tokenizer, prune_llm
from prunekit.llm.io import load_pruned, save_pruned
from prunekit.llm.perp import perp_retrain
from prunekit.models.gpt import GPT, GPTConfig

TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 40
IDS = torch.tensor(byte_tokenizer(TEXT))


def _pruned_gpt(seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))
    masks, _ = prune_llm(model, "wanda", 0.5, calibration=IDS, nsamples=8, progress=False)
    return model, masks


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("params", ["biases,norms,masklora", "scalelora", "head"])
def test_frozen_parameters_bitwise_unchanged(params: str) -> None:
    model, masks = _pruned_gpt()
    before = _snapshot(model)
    report = perp_retrain(
        model, masks, IDS, params, steps=12, lr=1e-2, batch_size=4, seqlen=32, progress=False
    )
    after = _snapshot(model)
    groups = set(params.split(","))
    for name, w in before.items():
        is_norm = ".ln" in f".{name}"
        is_bias = name.endswith("bias") and not is_norm
        trained = (
            ("norms" in groups and is_norm)
            or ("biases" in groups and is_bias)
            or ("head" in groups and name.startswith("lm_head"))
            or (groups & {"masklora", "scalelora"} and name in masks)
        )
        if trained:
            assert not torch.equal(after[name], w), name
        else:
            assert torch.equal(after[name], w), name
    for name, keep in masks.items():  # sparsity pattern exactly as pruned
        assert torch.equal(after[name] != 0, keep), name
    assert report["loss_last"] < report["loss_first"]
    assert report["trainable"] == sum(report["groups"].values())
    assert report["fraction"] == pytest.approx(report["trainable"] / report["total"])


def test_full_retraining_enforces_masks() -> None:
    model, masks = _pruned_gpt()
    report = perp_retrain(
        model, masks, IDS, "full", steps=8, lr=1e-2, batch_size=4, seqlen=32, progress=False
    )
    assert report["fraction"] == 1.0
    named = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(named[name] != 0, keep)


def test_gradient_checkpointing_matches_plain_training() -> None:
    results = []
    for ckpt in (False, True):
        model, masks = _pruned_gpt()
        perp_retrain(
            model,
            masks,
            IDS,
            "biases,norms",
            steps=4,
            lr=1e-2,
            batch_size=2,
            seqlen=32,
            gradient_checkpointing=ckpt,
            progress=False,
        )
        results.append(_snapshot(model))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)


def test_retrained_model_saves_and_reloads(tmp_path) -> None:
    model, masks = _pruned_gpt()
    perp_retrain(
        model,
        masks,
        IDS,
        "norms,masklora",
        steps=6,
        lr=1e-2,
        batch_size=2,
        seqlen=32,
        progress=False,
    )
    out = save_pruned(model, tmp_path / "perp", masks, {"retrain": "perp"})
    loaded, loaded_masks, _ = load_pruned(out)
    x = IDS[:32].unsqueeze(0)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert set(loaded_masks) == set(masks)
    named = dict(loaded.named_parameters())
    for name, keep in loaded_masks.items():
        assert torch.equal(named[name] != 0, keep)


def test_hf_llama_masklora_and_checkpointing() -> None:
    pytest.importorskip("transformers")
    import transformers as T

    from _llm_tiny import tiny_config, tokens

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config("llama"))
    data = tokens(8, 32)
    masks, _ = prune_llm(model, "sparsegpt", 0.5, calibration=data, nsamples=8, progress=False)
    before = _snapshot(model)
    report = perp_retrain(
        model,
        masks,
        data,
        "norms,masklora",
        steps=6,
        lr=1e-2,
        batch_size=2,
        gradient_checkpointing=True,
        progress=False,
    )
    assert report["gradient_checkpointing"] == "transformers"
    assert not getattr(model, "is_activation_checkpointing", False)
    after = _snapshot(model)
    assert report["groups"]["norms"] == 32 * 5  # 2 x (input, post-attention) + final RMSNorm
    for name, w in before.items():
        if "norm" in name or name in masks:
            continue
        assert torch.equal(after[name], w), name
    for name, keep in masks.items():
        assert torch.equal(after[name] != 0, keep), name
    assert any(not torch.equal(after[n], before[n]) for n in masks)


def test_bad_arguments() -> None:
    model, masks = _pruned_gpt()
    with pytest.raises(ValueError, match="steps"):
        perp_retrain(model, masks, IDS, "norms", steps=0, progress=False)
    with pytest.raises(ValueError, match="params"):
        perp_retrain(model, masks, IDS, "weights", steps=2, progress=False)
    with pytest.raises(ValueError, match="amp"):
        perp_retrain(model, masks, IDS, "norms", steps=2, seqlen=32, amp="fp8", progress=False)


def test_bf16_autocast_on_cpu_keeps_sparsity() -> None:
    model, masks = _pruned_gpt()
    report = perp_retrain(
        model, masks, IDS, "norms,scalelora", steps=3, batch_size=2, seqlen=32, amp="bf16",
        progress=False,
    )  # fmt: skip
    assert report["amp"] == "bfloat16"
    named = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(named[name] != 0, keep)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_mixed_precision_and_peak_memory() -> None:
    model, masks = _pruned_gpt()
    report = perp_retrain(
        model, masks.to("cuda"), IDS, "biases,norms,masklora", steps=3, batch_size=2,
        seqlen=32, device="cuda", progress=False,
    )  # fmt: skip
    assert report["amp"] in ("bfloat16", "float16")
    assert report["peak_memory_bytes"] > 0
    named = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(named[name].cpu() != 0, keep)
