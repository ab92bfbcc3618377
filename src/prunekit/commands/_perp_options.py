"""PERP options of ``prunekit prune-llm`` (retraining and block-wise reconstruction)."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit._device import resolve_device


def add_perp_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--retrain perp``, ``--params`` ... ``--reconstruct`` to the prune-llm parser."""
    g = p.add_argument_group(
        "PERP retraining",
        "retrain a small parameter subset after pruning (masks kept exactly), and/or prune with "
        "block-wise reconstruction",
    )
    g.add_argument("--retrain", default=None, choices=["perp"], help="retrain after pruning")
    g.add_argument(
        "--params",
        default="biases,norms,masklora",
        help="comma-separated groups to train: biases, norms, head, embeddings, masklora | "
        "scalelora | lora, full (default: biases,norms,masklora)",
    )
    g.add_argument("--retrain-data", default=None, help="text/ids to retrain on (default: --calib)")
    g.add_argument("--retrain-steps", type=int, default=1000)
    g.add_argument("--retrain-lr", type=float, default=1e-4)
    g.add_argument("--retrain-batch-size", type=int, default=8)
    g.add_argument("--retrain-seqlen", type=int, default=None, help="default: --seqlen")
    g.add_argument("--lora-rank", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=None, help="default: the rank")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument(
        "--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast"
    )
    g.add_argument(
        "--reconstruct",
        action="store_true",
        help="prune block by block, training each block's --params to match the dense outputs",
    )
    g.add_argument("--reconstruct-steps", type=int, default=100, help="steps per block")
    g.add_argument("--reconstruct-lr", type=float, default=1e-3)


def reconstruct_from_args(model: Any, args: argparse.Namespace, calibration: Any, tok: Any):
    """Run :func:`prunekit.llm.perp.reconstruct` with the prune-llm options."""
    from prunekit.llm.perp import reconstruct

    if args.owl or args.true_sequential:
        raise ValueError("--reconstruct: --owl and --true-sequential are not supported with it")
    return reconstruct(
        model,
        args.method,
        args.sparsity,
        args.pattern,
        calibration,
        args.params,
        tokenizer=tok,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        steps=args.reconstruct_steps,
        lr=args.reconstruct_lr,
        batch_size=args.retrain_batch_size,
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        magnitude_scope=args.magnitude_scope,
        blocksize=args.blocksize,
        percdamp=args.percdamp,
        include=args.include,
        exclude=args.exclude,
        device=resolve_device(args.device, "--device"),
        adapter=args.adapter,
        seed=args.seed,
        progress=not args.no_progress,
    )


def retrain_from_args(model: Any, masks: Any, args: argparse.Namespace, data: Any, tok: Any):
    """Run :func:`prunekit.llm.perp.perp_retrain` with the prune-llm options."""
    from prunekit.llm.perp import perp_retrain

    if data is None:
        raise ValueError("--retrain perp: needs --retrain-data or --calib")
    return perp_retrain(
        model,
        masks,
        data,
        args.params,
        tokenizer=tok,
        steps=args.retrain_steps,
        lr=args.retrain_lr,
        batch_size=args.retrain_batch_size,
        seqlen=args.retrain_seqlen or args.seqlen,
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        gradient_checkpointing=args.gradient_checkpointing,
        amp=None if args.amp == "off" else args.amp,
        device=resolve_device(args.device, "--device"),
        adapter=args.adapter,
        seed=args.seed,
        progress=not args.no_progress,
    )
