"""``prunekit prune-llm``: one-shot pruning of a local Hugging Face model (or prunekit GPT)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunekit._device import resolve_device
from prunekit.commands._perp_options import (
    add_perp_arguments,
    reconstruct_from_args,
    retrain_from_args,
)

EXAMPLE = """example:
  prunekit prune-llm ./opt-125m --method sparsegpt --sparsity 0.5 --calib calib.txt \\
      --out ./opt-125m-sparse --eval wiki.test.txt
  prunekit prune-llm ./llama --method wanda --pattern 2:4 --calib calib.txt --out ./llama-24

The output directory reloads with transformers' from_pretrained; it also holds
masks.safetensors (prunekit.MaskSet.load) and sparsity_report.json.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune-llm",
        help="prune a transformer / LLM block by block (magnitude, Wanda, SparseGPT, OWL)",
        description="Prune the linear layers of a local transformer model one block at a time "
        "with calibration data; embeddings and the LM head stay dense.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", help="local model directory (from_pretrained / prunekit GPT)")
    p.add_argument("--method", default="sparsegpt", choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (default 0.5)")
    p.add_argument("--pattern", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    p.add_argument(
        "--calib",
        default=None,
        help="calibration text file, dataset saved with save_to_disk, or .safetensors of "
        "token ids (tensor 'input_ids'); required except for magnitude",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=None, help="default: min(2048, context)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--owl", action="store_true", help="OWL outlier-weighted layer sparsity")
    p.add_argument("--owl-m", type=float, default=5.0)
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--include", action="append", default=[], help="regex of layers to prune")
    p.add_argument("--exclude", action="append", default=[], help="regex of layers to skip")
    p.add_argument("--true-sequential", action="store_true")
    p.add_argument("--magnitude-scope", default="layer", choices=["layer", "row"])
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    p.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT dampening")
    p.add_argument(
        "--device",
        default="auto",
        help="where blocks are processed: auto (CUDA when present), cpu, cuda:N",
    )
    p.add_argument("--offload", default=None, choices=["cpu", "disk"])
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--adapter", default=None, help="force an adapter (e.g. generic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", default=None, help="text file: perplexity before and after")
    p.add_argument("--eval-seqlen", type=int, default=None)
    p.add_argument("--eval-windows", type=int, default=None, help="cap on evaluation windows")
    p.add_argument("--no-progress", action="store_true")
    add_perp_arguments(p)
    p.set_defaults(func=run)


def _calibration(path: str | None):
    if path is None or not path.endswith(".safetensors"):
        return path
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"--calib: no such file {path!r}")
    tensors = load_file(path)
    if "input_ids" in tensors:
        return tensors["input_ids"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ValueError(f"--calib: {path!r} holds several tensors and none named 'input_ids'")


def run(args: argparse.Namespace) -> int:
    import torch

    from prunekit.llm import byte_tokenizer, prune_llm
    from prunekit.llm.evaluation import perplexity
    from prunekit.llm.io import load_model, save_pruned

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_model(args.model_dir, dtype)
    text_tokenizer = tokenizer
    if text_tokenizer is None and getattr(getattr(model, "config", None), "vocab_size", 0) == 256:
        text_tokenizer = byte_tokenizer  # prunekit's byte-level GPT
    ppl_before = None
    eval_kw = {
        "tokenizer": text_tokenizer,
        "seqlen": args.eval_seqlen,
        "max_windows": args.eval_windows,
    }
    if args.eval:
        ppl_before = perplexity(model, args.eval, **eval_kw)
    if args.reconstruct:
        masks, report = reconstruct_from_args(model, args, _calibration(args.calib), text_tokenizer)
    else:
        masks, report = prune_llm(
            model,
            args.method,
            args.sparsity,
            args.pattern,
            _calibration(args.calib),
            tokenizer=text_tokenizer,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            batch_size=args.batch_size,
            owl=args.owl,
            owl_m=args.owl_m,
            owl_lambda=args.owl_lambda,
            include=args.include,
            exclude=args.exclude,
            true_sequential=args.true_sequential,
            magnitude_scope=args.magnitude_scope,
            blocksize=args.blocksize,
            percdamp=args.percdamp,
            device=resolve_device(args.device, "--device"),
            offload=args.offload,
            adapter=args.adapter,
            seed=args.seed,
            progress=not args.no_progress,
        )
    if args.eval:
        report["perplexity"] = {
            "dense": ppl_before,
            "pruned": perplexity(model, args.eval, **eval_kw),
        }
    if args.retrain == "perp":
        data = _calibration(args.retrain_data) if args.retrain_data else _calibration(args.calib)
        report["perp"] = retrain_from_args(model, masks, args, data, text_tokenizer)
        if args.eval:
            report["perplexity"]["retrained"] = perplexity(model, args.eval, **eval_kw)
    out = save_pruned(model, args.out, masks, report, tokenizer)
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
    if "perp" in report:
        summary["perp_trainable_fraction"] = report["perp"]["fraction"]
    print(json.dumps(summary, indent=2))
    return 0
