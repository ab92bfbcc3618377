"""``prunekit prune-llm`` outputs stay what the source was: tokenizer checked before any work,
every non-weight file copied, retraining options checked before pruning, encoders retrained
(masked-LM or block reconstruction), the pruned model saved before retraining."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _llm_tiny import VOCAB, save_tiny, tokens  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.core.masks import MaskSet  # noqa: E402
from prunekit.core.serialization import save_safetensors  # noqa: E402
from prunekit.llm.io import copy_source_files, load_pruned  # noqa: E402

WORDS = [f"w{i}" for i in range(VOCAB - 3)]


def _save_tokenizer(directory, mask: bool = True) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"mask_token": "[MASK]"} if mask else {}
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", **extra
    ).save_pretrained(directory)


def _text(path, n_words: int = 1500):
    g = torch.Generator().manual_seed(0)
    path.write_text(
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n_words,), generator=g))
    )
    return str(path)


def _ids(path):
    save_safetensors({"input_ids": tokens(8, 32)}, path, {})
    return str(path)


SMALL = ["--nsamples", "4", "--seqlen", "32", "--no-progress", "--threads", "1"]


def test_text_without_tokenizer_fails_before_any_work(tmp_path, capsys):
    src = save_tiny("opt", tmp_path / "dense")
    out = tmp_path / "out"
    calib = _text(tmp_path / "calib.txt")
    rc = main(
        ["prune-llm", str(src), "--method", "wanda", "--calib", calib, "--out", str(out), *SMALL]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "holds no tokenizer" in err and "tokenizer.json" in err and "--calib" in err
    assert not out.exists()


def test_token_ids_without_tokenizer_save_no_tokenizer(tmp_path, capsys):
    src = save_tiny("opt", tmp_path / "dense")
    out = tmp_path / "out"
    calib = _ids(tmp_path / "ids.safetensors")
    rc = main(
        ["prune-llm", str(src), "--method", "wanda", "--calib", calib, "--out", str(out), *SMALL]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["sparsity_of_pruned_layers"] == 0.5
    names = {p.name for p in out.iterdir()}
    assert not names & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt"}


def _sentence_transformers_folder(root):
    import transformers as T

    from _llm_tiny import tiny_config

    torch.manual_seed(0)
    T.BertModel(tiny_config("bert")).save_pretrained(root)
    _save_tokenizer(root)
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))  # fmt: skip
    (root / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (root / "2_Normalize").mkdir()
    (root / "README.md").write_text("a model card")
    (root / "sparsity_report.json").write_text("{}")  # prunekit's own file must win
    (root / "pytorch_model.bin").write_bytes(b"old weights")  # replaced, never copied
    return root


def test_sentence_transformers_folder_keeps_every_module(tmp_path, capsys):
    src = _sentence_transformers_folder(tmp_path / "st")
    out = tmp_path / "out"
    rc = main(["prune-llm", str(src), "--method", "magnitude", "--out", str(out), *SMALL])
    assert rc == 0
    capsys.readouterr()
    for name in ("modules.json", "sentence_bert_config.json", "README.md", "1_Pooling/config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert (out / "2_Normalize").is_dir()
    assert not (out / "pytorch_model.bin").exists()
    assert "weights" in json.loads((out / "sparsity_report.json").read_text())
    model = transformers.BertModel.from_pretrained(out)
    masks = MaskSet.load(out / "masks.safetensors")
    named = dict(model.named_parameters())
    assert masks and all(torch.all(named[n][~m] == 0) for n, m in masks.items())


def test_copy_source_files_copies_links_as_files_and_keeps_existing(tmp_path):
    blobs = tmp_path / "blobs"  # a Hugging Face cache snapshot links to its blobs
    blobs.mkdir()
    (blobs / "a").write_text("linked")
    src = tmp_path / "src"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "keep.json").write_text("1")
    (src / "model.safetensors").write_text("w")
    (src / "model.safetensors.index.json").write_text("{}")
    (src / "link.json").symlink_to(blobs / "a")
    (src / "1_Pooling" / "config.json").symlink_to(blobs / "a")
    (src / "broken.json").symlink_to(tmp_path / "missing")
    (src / ".cache").mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.json").write_text("mine")
    assert copy_source_files(src, dst) == ["1_Pooling", "link.json"]
    assert (dst / "keep.json").read_text() == "mine"
    for path in (dst / "link.json", dst / "1_Pooling" / "config.json"):
        assert not path.is_symlink() and path.read_text() == "linked"
    assert sorted(p.name for p in dst.iterdir()) == ["1_Pooling", "keep.json", "link.json"]


def _bert_mlm(tmp_path, mask: bool = True):
    src = save_tiny("bert", tmp_path / "bert")  # BertForMaskedLM
    _save_tokenizer(src, mask=mask)
    return src


PERP = ["--retrain", "perp", "--params", "biases,norms,masklora", "--retrain-steps", "3",
        "--retrain-batch-size", "2", "--lora-rank", "2", "--retrain-lr", "1e-2"]  # fmt: skip


def test_masked_lm_encoder_retrains_with_the_mlm_loss(tmp_path, capsys):
    src = _bert_mlm(tmp_path)
    out = tmp_path / "out"
    calib = _text(tmp_path / "calib.txt")
    rc = main(["prune-llm", str(src), "--method", "wanda", "--calib", calib, "--out", str(out),
               *SMALL, *PERP])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 < summary["perp_trainable_fraction"] < 1
    perp = json.loads((out / "sparsity_report.json").read_text())["pruning"]["perp"]
    assert perp["objective"] == "masked" and perp["steps"] == 3
    model, masks, _ = load_pruned(out)
    named = dict(model.named_parameters())
    assert all(torch.equal(named[n] != 0, keep) for n, keep in masks.items())


def test_retrain_options_are_checked_before_pruning(tmp_path, capsys):
    src = _bert_mlm(tmp_path, mask=False)
    out = tmp_path / "out"
    calib = _text(tmp_path / "calib.txt")
    rc = main(["prune-llm", str(src), "--calib", calib, "--out", str(out), *SMALL, *PERP])
    assert rc == 2
    assert "--retrain perp" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["prune-llm", str(src), "--calib", calib, "--out", str(out), *SMALL, *PERP[:2],
               "--params", "norms,bogus"])  # fmt: skip
    assert rc == 2 and "--params" in capsys.readouterr().err and not out.exists()
    rc = main(["prune-llm", str(src), "--calib", calib, "--out", str(out), *SMALL, *PERP[:2],
               "--amp", "fp16"])  # fmt: skip
    assert rc == 2 and "fp16" in capsys.readouterr().err and not out.exists()
    rc = main(["prune-llm", str(src), "--calib", calib, "--out", str(out), *SMALL, *PERP[:2],
               "--retrain-seqlen", "65"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--retrain-seqlen: 65 tokens exceed the model's context of 64" in err
    assert not out.exists()


def test_headless_encoder_retrains_by_block_reconstruction(tmp_path, capsys):
    src = _sentence_transformers_folder(tmp_path / "st")
    out = tmp_path / "out"
    calib = _text(tmp_path / "calib.txt")
    rc = main(["prune-llm", str(src), "--method", "wanda", "--calib", calib, "--out", str(out),
               *SMALL, *PERP, "--reconstruct-steps", "2"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "block-wise reconstruction" in captured.err
    assert json.loads(captured.out)["perp_objective"] == "block reconstruction"
    report = json.loads((out / "sparsity_report.json").read_text())["pruning"]
    assert len(report["blocks"]) == 2 and all("error_reconstructed" in b for b in report["blocks"])
    assert (out / "modules.json").is_file()


def test_pruned_model_is_saved_before_retraining_fails(tmp_path, monkeypatch, capsys):
    import prunekit.commands.prune_llm as cmd

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cmd, "retrain_from_args", fail)
    src = save_tiny("opt", tmp_path / "dense")
    out = tmp_path / "out"
    calib = _ids(tmp_path / "ids.safetensors")
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["prune-llm", str(src), "--method", "wanda", "--calib", calib, "--out", str(out),
              *SMALL, *PERP])  # fmt: skip
    assert "not retrained" in capsys.readouterr().err
    model, masks, _ = load_pruned(out)
    named = dict(model.named_parameters())
    assert masks and all(torch.all(named[n][~m] == 0) for n, m in masks.items())


def test_masked_lm_objective_and_bert_masking(tmp_path):
    from _llm_tiny import load_tiny, tiny_config
    from prunekit.llm.perp import _mask_tokens, perp_retrain, retrain_objective

    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(3, VOCAB, (64, 32), generator=gen)
    inputs, labels = _mask_tokens(batch, 2, VOCAB, 0.15, gen)
    picked = labels != -100
    assert torch.equal(labels[picked], batch[picked])
    assert torch.equal(inputs[~picked], batch[~picked])  # only predicted positions change
    assert 0.12 < picked.float().mean() < 0.18
    assert 0.75 < (inputs[picked] == 2).float().mean() < 0.85  # 80 % become the mask token

    mlm = load_tiny(save_tiny("bert", tmp_path / "bert"))
    assert retrain_objective(mlm) == "masked"
    assert retrain_objective(transformers.BertModel(tiny_config("bert"))) is None
    assert retrain_objective(load_tiny(save_tiny("opt", tmp_path / "opt"))) == "causal"
    report = perp_retrain(mlm, None, tokens(8, 16), "norms", mask_token_id=2, steps=2,
                          batch_size=2, progress=False)  # fmt: skip
    assert report["objective"] == "masked" and report["seqlen"] == 16
    with pytest.raises(ValueError, match="needs a mask token"):
        perp_retrain(mlm, None, tokens(8, 16), "norms", steps=1, progress=False)
