"""Pruned models save, reload with from_pretrained and generate; the CLI does the same; the
evaluation helpers compute what they claim."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _llm_tiny import VOCAB, load_tiny, save_tiny, tokens  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.core.masks import MaskSet  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.evaluation import output_agreement, perplexity  # noqa: E402
from prunekit.llm.io import load_pruned, save_pruned  # noqa: E402
from prunekit.models.gpt import GPT, GPTConfig  # noqa: E402

WORDS = [f"w{i}" for i in range(VOCAB - 2)]


def _save_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<pad>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)


def _text(n_words: int = 3000, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_save_reload_generate(tmp_path, family):
    src = save_tiny(family, tmp_path / "dense")
    model = load_tiny(src)
    masks, report = prune_llm(
        model, "sparsegpt", 0.5, calibration=tokens(), nsamples=8, seqlen=32, progress=False
    )
    out = save_pruned(model, tmp_path / "sparse", masks, report)
    assert (out / "model.safetensors").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(reloaded.named_parameters())[name]), name
    _, masks2, _ = load_pruned(out)
    assert set(masks2) == set(masks) and all(torch.equal(masks[n], masks2[n]) for n in masks)
    masks2.validate(reloaded)
    assert all(torch.all(dict(reloaded.named_parameters())[n][~m] == 0) for n, m in masks2.items())
    data = json.loads((out / "sparsity_report.json").read_text())
    assert data["weights"]["total"]["sparsity"] == pytest.approx(0.5)
    assert data["pruning"]["method"] == "sparsegpt"
    prompt = torch.tensor([[3, 4, 5]])
    generated = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 8)


def test_prunekit_gpt_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))
    masks, report = prune_llm(model, "magnitude", 0.7, progress=False)
    save_pruned(model, tmp_path / "g", masks, report)
    again, masks2, tok = load_pruned(tmp_path / "g")
    assert tok is None and isinstance(again, GPT)
    x = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(again(x), model(x))
    assert masks2.sparsity == pytest.approx(0.7, abs=1e-3)


def test_perplexity_by_hand_and_agreement(tmp_path):
    model = load_tiny(save_tiny("llama", tmp_path / "m"))
    stream = tokens(1, 100).reshape(-1)
    ppl = perplexity(model, stream, seqlen=32)
    windows = stream[:96].reshape(3, 32)
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    assert ppl == pytest.approx(math.exp(float(nll)), rel=1e-5)
    same = output_agreement(model, model, windows)
    assert same["relative_error"] == 0 and same["top1_agreement"] == 1 and same["kl"] == 0
    import copy

    pruned = copy.deepcopy(model)
    prune_llm(pruned, "wanda", 0.5, calibration=tokens(), nsamples=8, seqlen=32, progress=False)
    diff = output_agreement(model, pruned, windows)
    assert diff["relative_error"] > 0 and diff["kl"] > 0


def test_cli_prune_llm_end_to_end(tmp_path, capsys):
    src = save_tiny("opt", tmp_path / "dense")
    _save_tokenizer(src)
    calib = tmp_path / "calib.txt"
    calib.write_text(_text())
    out = tmp_path / "sparse"
    code = main(
        [
            "prune-llm",
            str(src),
            "--method",
            "wanda",
            "--pattern",
            "2:4",
            "--calib",
            str(calib),
            "--out",
            str(out),
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--eval",
            str(calib),
            "--eval-seqlen",
            "32",
            "--eval-windows",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sparsity_of_pruned_layers"] == 0.5 and summary["pattern"] == "2:4"
    assert summary["perplexity"]["pruned"] > 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    masks = MaskSet.load(out / "masks.safetensors")
    assert all(torch.all(dict(model.named_parameters())[n][~m] == 0) for n, m in masks.items())
    assert transformers.AutoTokenizer.from_pretrained(out) is not None


def test_cli_errors(tmp_path, capsys):
    src = save_tiny("opt", tmp_path / "dense")
    code = main(
        ["prune-llm", str(src), "--calib", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "nope.txt" in capsys.readouterr().err
