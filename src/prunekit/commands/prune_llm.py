"""``prunekit prune-llm``: one-shot pruning of a local Hugging Face model (or prunekit GPT)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunekit.commands._common import (
    add_progress_argument,
    add_threads_argument,
    apply_threads,
    progress_enabled,
)
from prunekit.commands._flags import Flag, add_flags, record_values
from prunekit.commands._perp_options import (
    add_perp_arguments,
    check_perp_args,
    reconstruct_from_args,
    retrain_from_args,
)
from prunekit.core.device import resolve_device
from prunekit.criteria.registry import criterion_names
from prunekit.llm.engine import LLMPruneConfig

EXAMPLE = """examples:
  prunekit prune-llm ./opt-125m --method sparsegpt --sparsity 0.5 --calib calib.txt \\
      --out ./opt-125m-sparse --eval wiki.test.txt
  prunekit prune-llm ./llama --method wanda --pattern 2:4 --calib calib.txt --out ./llama-24
  prunekit prune-llm ./opt-125m --method wanda --calib calib.txt --out ./opt-perp \\
      --retrain perp --params biases,norms,masklora --retrain-steps 500

The output folder reloads with transformers' from_pretrained; it also holds masks.safetensors
(prunekit.MaskSet.load) and sparsity_report.json, and a copy of every other file and folder of
the source (tokenizer, modules.json, 1_Pooling/ ...), so a sentence-transformers model stays one.
Text given to --calib / --eval / --retrain-data needs the model folder's tokenizer files; token
ids in a .safetensors file do not.
"""


#: prune-llm's flags in help order; those with a field fill :class:`LLMPruneConfig`.
PRUNE_FLAGS = (
    Flag("--method", "pruning rule (default: %(default)s)", "method", default="sparsegpt",
         choices=lambda: criterion_names("llm")),  # the registry's kind "llm"
    Flag("--sparsity", "fraction of weights pruned (default: %(default)s)", "sparsity", float),
    Flag("--pattern", "N:M semi-structured pattern, e.g. 2:4 (default: unstructured; implies "
         "the sparsity 1 - N/M)", "pattern"),
    Flag("--calib", "calibration text file, dataset saved with save_to_disk, or .safetensors "
         "of token ids (tensor 'input_ids'); required except for magnitude (default: none)"),
    Flag("--out", "output directory (created; required)", required=True),
    Flag("--compressed-tensors", "also write OUT/compressed-tensors/: the pruned layers in the "
         "compressed-tensors sparse layout (sparse-24-bitmask for 2:4, else sparse-bitmask) for "
         "inference engines (default: off)", action="store_true"),
    Flag("--nsamples", "calibration windows (default: %(default)s)", "nsamples", int),
    Flag("--seqlen", "tokens per calibration window (default: min(2048, the model's context))",
         "seqlen", int),
    Flag("--batch-size", "windows per forward pass of a block (default: %(default)s)",
         "batch_size", int),
    Flag("--owl", "OWL outlier-weighted block sparsities (default: off)", "owl",
         action="store_true"),
    Flag("--owl-m", "OWL: a score is an outlier above M x the mean (default: %(default)s)",
         "owl_m", float),
    Flag("--owl-lambda", "OWL: block sparsities spread over s +- lambda (default: %(default)s)",
         "owl_lambda", float),
    Flag("--include", "regex of layer names to prune (repeatable; default: every linear in the "
         "blocks)", "include", default=[], action="append"),
    Flag("--exclude", "regex of layer names to keep dense (repeatable; default: none)",
         "exclude", default=[], action="append"),
    Flag("--true-sequential", "within a block, recompute the inputs of each layer after pruning "
         "the previous ones (default: off)", "true_sequential", action="store_true"),
    Flag("--magnitude-scope", "magnitude: compare weights within the layer or each row "
         "(default: %(default)s)", "magnitude_scope", choices=["layer", "row"]),
    Flag("--blocksize", "SparseGPT column block size (default: %(default)s)", "blocksize", int),
    Flag("--percdamp", "SparseGPT dampening, a fraction of mean(diag H) (default: %(default)s)",
         "percdamp", float),
    Flag("--device", "where blocks are processed: auto (CUDA when present), cpu, cuda:N "
         "(default: %(default)s)", default="auto"),
    Flag("--offload", "keep the blocks not being pruned on the CPU or on disk (default: no "
         "offload)", "offload", choices=["cpu", "disk"]),
    Flag("--dtype", "load the weights in this dtype (default: as saved)",
         choices=["float32", "float16", "bfloat16"]),
    Flag("--adapter", "force a model adapter, e.g. generic (default: detected from the model)"),
    Flag("--seed", "calibration sampling seed (default: %(default)s)", "seed", int),
    Flag("--eval", "text file: perplexity before and after (default: none)"),
    Flag("--eval-seqlen", "evaluation window (default: --seqlen)", type=int),
    Flag("--eval-windows", "cap on evaluation windows (default: all)", type=int),
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune-llm",
        help="prune a transformer / LLM block by block (magnitude, Wanda, SparseGPT, OWL)",
        description="Prune the linear layers of a local transformer model one block at a time\n"
        "with calibration data; embeddings and the LM head stay dense.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", help="local model directory (from_pretrained / prunekit GPT)")
    add_flags(p, PRUNE_FLAGS, LLMPruneConfig)
    add_progress_argument(p)
    add_threads_argument(p)
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in MODEL_DIR (auto_map + .py files); off by default: "
        "prunekit passes trust_remote_code=False to transformers and never runs such code",
    )
    add_perp_arguments(p)
    p.set_defaults(func=run)


def prune_options(args: argparse.Namespace) -> LLMPruneConfig:
    """The :func:`~prunekit.llm.prune_llm` options the flags ask for."""
    values = record_values(args, PRUNE_FLAGS)
    return LLMPruneConfig.from_values({**values, "progress": not args.no_progress})


def _calibration(path: str | None):
    import torch

    if path is None or not path.endswith(".safetensors"):
        return path
    from prunekit.core.errors import FileFormatError
    from prunekit.core.serialization import read_safetensors

    if not Path(path).is_file():
        raise FileNotFoundError(f"--calib: no such file {path!r}")
    tensors, _ = read_safetensors(path)
    if "input_ids" in tensors:
        ids = tensors["input_ids"]
    elif len(tensors) == 1:
        ids = next(iter(tensors.values()))
    else:
        raise FileFormatError(path, "holds several tensors and none named 'input_ids' (--calib)")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise FileFormatError(path, f"token ids have dtype {ids.dtype}, expected an integer dtype")
    if ids.dim() not in (1, 2) or ids.numel() == 0:
        raise FileFormatError(
            path, f"expected a non-empty 1-D or 2-D token tensor, got shape {list(ids.shape)}"
        )
    return ids


def _text_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(flag, path) of every input given as text, which needs a tokenizer."""
    given = [("--calib", args.calib), ("--eval", args.eval)]
    if args.retrain == "perp":
        given.append(("--retrain-data", args.retrain_data))
    return [(flag, path) for flag, path in given if path and not path.endswith(".safetensors")]


def check_tokenizer(args: argparse.Namespace) -> bool:
    """Whether the model folder holds a tokenizer; fail before loading anything when text
    inputs need one and it holds none (a Hugging Face folder; prunekit's GPT reads bytes)."""
    from prunekit.llm.io import TOKENIZER_FILES, tokenizer_files

    root = Path(args.model_dir)
    if tokenizer_files(root) or not (root / "config.json").is_file():
        return bool(tokenizer_files(root))
    text = _text_inputs(args)
    if text:
        flag, path = text[0]
        raise FileNotFoundError(
            f"model_dir: {str(root)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}), "
            f"so the text in {flag} {path!r} cannot be tokenised; copy the original model's "
            "tokenizer files there, or give token ids as a .safetensors file"
        )
    return False


def _save(model: Any, args: argparse.Namespace, masks: Any, report: dict, tokenizer: Any) -> Path:
    """Save the pruned model and copy the source folder's other files next to it."""
    from prunekit.llm.io import copy_source_files, save_pruned

    out = save_pruned(model, args.out, masks, report, tokenizer)
    copy_source_files(args.model_dir, out)
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from prunekit.llm import byte_tokenizer, prune_llm
    from prunekit.llm.evaluation import perplexity
    from prunekit.llm.io import load_model

    apply_threads(args)
    args.no_progress = not progress_enabled(args)
    has_tokenizer = check_tokenizer(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_model(args.model_dir, dtype, trust_remote_code=args.trust_remote_code)
    if not has_tokenizer:
        tokenizer = None  # never save the empty tokenizer transformers builds from a config
    text_tokenizer = tokenizer
    if text_tokenizer is None and getattr(getattr(model, "config", None), "vocab_size", 0) == 256:
        text_tokenizer = byte_tokenizer  # prunekit's byte-level GPT
    check_perp_args(model, args, text_tokenizer)  # before any pruning work
    ppl_before = None
    eval_kw = {
        "tokenizer": text_tokenizer,
        "seqlen": args.eval_seqlen,
        "max_windows": args.eval_windows,
    }
    if args.eval:
        ppl_before = perplexity(model, args.eval, **eval_kw)
    if args.reconstruct:
        prune, calibration = prune_options(args), _calibration(args.calib)
        masks, report = reconstruct_from_args(model, args, prune, calibration, text_tokenizer)
    else:
        masks, report = prune_llm(
            model,
            calibration=_calibration(args.calib),
            tokenizer=text_tokenizer,
            device=resolve_device(args.device, "--device"),
            adapter=args.adapter,
            **prune_options(args).kwargs(),
        )
    if args.eval:
        report["perplexity"] = {
            "dense": ppl_before,
            "pruned": perplexity(model, args.eval, **eval_kw),
        }
    # Saved before retraining: a retraining failure must not lose the pruning work.
    out = _save(model, args, masks, report, tokenizer)
    if args.retrain == "perp" and not args.reconstruct:
        data = _calibration(args.retrain_data) if args.retrain_data else _calibration(args.calib)
        try:
            report["perp"] = retrain_from_args(model, masks, args, data, text_tokenizer)
        except BaseException:
            print(
                f"prunekit prune-llm: retraining failed; the pruned model (not retrained) "
                f"is saved in {out}",
                file=sys.stderr,
            )
            raise
        if args.eval:
            report["perplexity"]["retrained"] = perplexity(model, args.eval, **eval_kw)
        out = _save(model, args, masks, report, tokenizer)
    compressed = None
    if args.compressed_tensors:
        compressed = _save_compressed_tensors(model, masks, out, report["pattern"], tokenizer)
    summary = {
        "method": report["method"],
        "pattern": report["pattern"],
        "sparsity_of_pruned_layers": round(masks.sparsity, 4),
        "layers": len(masks),
        "seconds": round(report["seconds"], 2),
        "out": str(out),
    }
    if args.eval:
        summary["perplexity"] = report["perplexity"]
    if args.compressed_tensors:
        summary["compressed_tensors"] = str(compressed)
    if "perp" in report:
        summary["perp_trainable_fraction"] = report["perp"]["fraction"]
    if args.reconstruct and args.retrain == "perp":
        summary["perp_objective"] = "block reconstruction"
    print(json.dumps(summary, indent=2))
    return 0


def _save_compressed_tensors(
    model: Any, masks: Any, out: Path, pattern: str | None, tokenizer: Any
) -> Path:
    """The pruned Linear layers in the compressed-tensors layout; every other Linear is ignored
    (stored dense), so a 2:4 checkpoint only claims 2:4 for layers that are."""
    from torch import nn

    from prunekit.export import save_compressed_tensors

    ignore = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and f"{name}.weight" not in masks
    ]
    fmt = "sparse-24-bitmask" if pattern == "2:4" else "sparse-bitmask"
    target = save_compressed_tensors(model, out / "compressed-tensors", format=fmt, ignore=ignore)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(target)
    return target
