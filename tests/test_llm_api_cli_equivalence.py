"""``prunekit prune-llm`` and the Python API it documents give bitwise-identical weights.

The command builds the same typed options (``LLMPruneConfig``, ``PerpConfig``,
``ReconstructConfig``) and calls ``prune_llm`` / ``perp_retrain`` / ``reconstruct``, so a
tiny random Llama pruned (and retrained) both ways must end with the very same tensors.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from _llm_tiny import save_tiny, tokens  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.core.serialization import save_safetensors  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.io import load_model, load_pruned  # noqa: E402
from prunekit.llm.perp import perp_retrain, reconstruct  # noqa: E402

COMMON = ["--method", "wanda", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "16",
          "--device", "cpu", "--no-progress", "--threads", "1"]  # fmt: skip
PERP = ["--params", "biases,norms,masklora", "--lora-rank", "2", "--retrain-batch-size", "2",
        "--retrain-lr", "1e-2"]  # fmt: skip
PRUNE = {"method": "wanda", "sparsity": 0.5, "nsamples": 4, "seqlen": 16, "progress": False}
TRAIN = {"rank": 2, "batch_size": 2, "lr": 1e-2}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    src = save_tiny("llama", root / "dense")
    calib = root / "ids.safetensors"
    save_safetensors({"input_ids": tokens(8, 16)}, calib, {})
    return src, str(calib)


def _api(src, flavour: str):
    model, _ = load_model(src)
    ids = tokens(8, 16)
    if flavour == "reconstruct":
        masks, _ = reconstruct(model, calibration=ids, params="biases,norms,masklora", steps=2,
                               **PRUNE, **TRAIN)  # fmt: skip
        return model, masks
    masks, _ = prune_llm(model, calibration=ids, **PRUNE)
    if flavour == "perp":
        perp_retrain(model, masks, ids, "biases,norms,masklora", steps=3, seqlen=16,
                     progress=False, **TRAIN)  # fmt: skip
    return model, masks


def _cli(src, calib, out, flavour: str, capsys):
    extra = {
        "plain": [],
        "perp": ["--retrain", "perp", *PERP, "--retrain-steps", "3"],
        "reconstruct": [
            "--reconstruct",
            *PERP,
            "--reconstruct-steps",
            "2",
            "--reconstruct-lr",
            "1e-2",
        ],
    }[flavour]
    assert main(["prune-llm", str(src), "--calib", calib, "--out", str(out), *COMMON, *extra]) == 0
    json.loads(capsys.readouterr().out)  # the summary
    model, masks, _ = load_pruned(out)
    return model, masks


@pytest.mark.parametrize("flavour", ["plain", "perp", "reconstruct"])
def test_cli_and_api_give_identical_weights(llama, tmp_path, capsys, flavour):
    src, calib = llama
    api_model, api_masks = _api(src, flavour)
    cli_model, cli_masks = _cli(src, calib, tmp_path / "out", flavour, capsys)
    api_params = dict(api_model.named_parameters())
    cli_params = dict(cli_model.named_parameters())
    assert api_params.keys() == cli_params.keys()
    for name, value in api_params.items():
        assert torch.equal(value, cli_params[name]), name
    assert list(api_masks) == list(cli_masks) and len(api_masks) == 14  # 7 linears x 2 blocks
    for name, keep in api_masks.items():
        assert torch.equal(keep, cli_masks[name]), name
        assert keep.float().mean().item() == 0.5
        assert torch.all(api_params[name][~keep] == 0), name


def test_retraining_changes_what_it_trains(llama):
    src, _ = llama
    pruned, _ = _api(src, "plain")
    retrained, _ = _api(src, "perp")
    before = dict(pruned.named_parameters())
    changed = {n for n, p in retrained.named_parameters() if not torch.equal(p, before[n])}
    # norms are trained; MaskLoRA merges into the pruned linears; embeddings and head stay
    assert any("norm" in n for n in changed) and any("q_proj" in n for n in changed)
    assert "model.embed_tokens.weight" not in changed and "lm_head.weight" not in changed


def test_flags_fill_the_records_with_their_defaults():
    from prunekit.cli import build_parser
    from prunekit.commands._perp_options import (
        RECONSTRUCT_FLAGS,
        RETRAIN_FLAGS,
        perp_options,
        reconstruct_options,
    )
    from prunekit.commands.prune_llm import PRUNE_FLAGS, prune_options
    from prunekit.llm import LLMPruneConfig
    from prunekit.llm.perp import PerpConfig, ReconstructConfig

    for flags, record in ((PRUNE_FLAGS, LLMPruneConfig), (RETRAIN_FLAGS, PerpConfig),
                          (RECONSTRUCT_FLAGS, ReconstructConfig)):  # fmt: skip
        assert {f.field for f in flags if f.field} <= set(record.field_names())
    args = build_parser().parse_args(["prune-llm", "m", "--out", "o"])
    args.no_progress = True
    # the command's one own default: SparseGPT; every other default is the record's
    assert prune_options(args) == LLMPruneConfig(method="sparsegpt", progress=False)
    params = "biases,norms,masklora"
    assert perp_options(args) == PerpConfig(params, progress=False)
    assert reconstruct_options(args) == ReconstructConfig(params)


def test_record_errors_name_the_flag(llama, tmp_path, capsys):
    src, calib = llama
    base = ["prune-llm", str(src), "--calib", calib, "--out", str(tmp_path / "o"), *COMMON]
    assert main([*base, "--retrain", "perp", "--retrain-steps", "0"]) == 2
    assert "--retrain-steps: expected a positive int, got 0" in capsys.readouterr().err
    assert main([*base, "--reconstruct", "--reconstruct-lr", "0"]) == 2
    assert "--reconstruct-lr: expected a positive number, got 0.0" in capsys.readouterr().err
    assert main([*base, "--reconstruct", "--params", "head"]) == 2
    assert "--params: 'head' and 'embeddings' lie outside the blocks" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
