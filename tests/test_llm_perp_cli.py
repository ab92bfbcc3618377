"""``prunekit prune-llm --retrain perp`` and ``--reconstruct`` end to end on prunekit's GPT."""

from __future__ import annotations

import json

import torch

from prunekit.cli import main
from prunekit.llm.io import load_pruned, save_pruned
from prunekit.models.gpt import GPT, GPTConfig

TEXT = "Pack my box with five dozen liquor jugs; the five boxing wizards jump quickly. " * 40


def test_cli_retrain_and_reconstruct(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    src = save_pruned(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)), tmp_path / "m")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    common = ["--calib", str(text), "--nsamples", "8", "--seqlen", "32", "--no-progress"]
    out = tmp_path / "perp"
    rc = main(
        ["prune-llm", str(src), "--method", "wanda", *common, "--out", str(out),
         "--retrain", "perp", "--params", "biases,norms,masklora", "--retrain-steps", "6",
         "--retrain-lr", "1e-2", "--retrain-batch-size", "2", "--lora-rank", "2",
         "--eval", str(text), "--eval-seqlen", "32"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 < summary["perp_trainable_fraction"] < 1
    report = json.loads((out / "sparsity_report.json").read_text())["pruning"]
    assert report["perp"]["params"] == ["biases", "norms", "masklora"]
    assert report["perp"]["rank"] == 2
    assert set(report["perplexity"]) == {"dense", "pruned", "retrained"}
    model, masks, _ = load_pruned(out)
    named = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(named[name] != 0, keep)

    out2 = tmp_path / "rec"
    rc = main(
        ["prune-llm", str(src), "--method", "sparsegpt", "--pattern", "2:4", *common,
         "--out", str(out2), "--reconstruct", "--params", "norms,scalelora",
         "--reconstruct-steps", "5"]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out2 / "sparsity_report.json").read_text())["pruning"]
    assert report["pattern"] == "2:4" and len(report["blocks"]) == 2
    assert all("error_reconstructed" in row for row in report["blocks"])
    model, masks, _ = load_pruned(out2)
    assert abs(masks.sparsity - 0.5) < 1e-9
