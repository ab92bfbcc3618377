"""PERP options of ``prunekit prune-llm`` (retraining and block-wise reconstruction)."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.core.device import resolve_device


def add_perp_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--retrain perp``, ``--params`` ... ``--reconstruct`` to the prune-llm parser."""
    g = p.add_argument_group(
        "PERP retraining",
        "retrain a small parameter subset after pruning (masks kept exactly), and/or prune with "
        "block-wise reconstruction",
    )
    g.add_argument(
        "--retrain",
        default=None,
        choices=["perp"],
        help="retrain after pruning: next-token loss for decoders, masked-LM loss for encoders "
        "with an MLM head, block reconstruction for other encoders (default: no retraining)",
    )
    g.add_argument(
        "--params",
        default="biases,norms,masklora",
        help="comma-separated groups to train: biases, norms, head, embeddings, masklora | "
        "scalelora | lora, full (default: biases,norms,masklora)",
    )
    g.add_argument(
        "--retrain-data",
        default=None,
        help="text / .safetensors ids to retrain on (default: --calib)",
    )
    g.add_argument(
        "--retrain-steps", type=int, default=1000, help="optimizer steps (default: %(default)s)"
    )
    g.add_argument(
        "--retrain-lr",
        type=float,
        default=1e-4,
        help="peak AdamW learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--retrain-batch-size", type=int, default=8, help="windows per step (default: %(default)s)"
    )
    g.add_argument(
        "--retrain-seqlen", type=int, default=None, help="tokens per window (default: --seqlen)"
    )
    g.add_argument("--lora-rank", type=int, default=8, help="adapter rank (default: %(default)s)")
    g.add_argument(
        "--lora-alpha", type=float, default=None, help="adapter scale numerator (default: the rank)"
    )
    g.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute block activations in the backward pass (default: off)",
    )
    g.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast: bf16/fp16 on CUDA when auto (default: %(default)s)",
    )
    g.add_argument(
        "--reconstruct",
        action="store_true",
        help="prune block by block, training each block's --params to match the dense outputs "
        "(default: off)",
    )
    g.add_argument(
        "--reconstruct-steps", type=int, default=100, help="steps per block (default: %(default)s)"
    )
    g.add_argument(
        "--reconstruct-lr",
        type=float,
        default=1e-3,
        help="AdamW learning rate (default: %(default)s)",
    )


def check_perp_args(model: Any, args: argparse.Namespace, tok: Any) -> None:
    """Check every retraining / reconstruction option against ``model`` before pruning starts.

    An encoder without a masked-LM head has no token logits to retrain on: ``--retrain perp``
    then prunes with block-wise reconstruction against the dense model's hidden states
    (``--reconstruct``), and says so.
    """
    import sys
    from pathlib import Path

    from prunekit.llm.perp import check_retrain, parse_params, retrain_objective

    if args.retrain != "perp" and not args.reconstruct:
        return
    try:
        groups = parse_params(args.params)
    except ValueError as err:
        raise ValueError(f"--params: {err}") from None
    for flag, value in (
        ("--retrain-steps", args.retrain_steps),
        ("--retrain-batch-size", args.retrain_batch_size),
        ("--lora-rank", args.lora_rank),
        ("--reconstruct-steps", args.reconstruct_steps),
    ):
        if value < 1:
            raise ValueError(f"{flag}: expected a positive integer, got {value}")
    for flag, value in (
        ("--retrain-lr", args.retrain_lr),
        ("--reconstruct-lr", args.reconstruct_lr),
    ):
        if not value > 0:
            raise ValueError(f"{flag}: expected a positive number, got {value}")
    if args.retrain == "perp" and not args.reconstruct:
        data = args.retrain_data or args.calib
        if data is None:
            raise ValueError("--retrain perp: needs --retrain-data or --calib")
        if args.retrain_data and not Path(args.retrain_data).exists():
            raise FileNotFoundError(f"--retrain-data: no such file {args.retrain_data!r}")
        from prunekit.llm.adapters import get_adapter

        context = get_adapter(model, args.adapter).context_length(model)
        seqlen = args.retrain_seqlen or args.seqlen
        if context and seqlen and seqlen > context:
            flag = "--retrain-seqlen" if args.retrain_seqlen else "--seqlen"
            raise ValueError(f"{flag}: {seqlen} tokens exceed the model's context of {context}")
        if retrain_objective(model, args.adapter) is None:
            print(
                f"prunekit prune-llm: note: {type(model).__name__} is an encoder without a "
                "masked-LM head; --retrain perp runs block-wise reconstruction against the "
                "dense model's hidden states (--reconstruct, --reconstruct-steps)",
                file=sys.stderr,
            )
            args.reconstruct = True
        else:
            try:
                check_retrain(
                    model,
                    groups,
                    tokenizer=tok,
                    amp=None if args.amp == "off" else args.amp,
                    device=resolve_device(args.device, "--device"),
                    adapter=args.adapter,
                )
            except ValueError as err:
                raise ValueError(f"--retrain perp: {err}") from None
    if args.reconstruct:
        if args.owl or args.true_sequential:
            raise ValueError("--reconstruct: --owl and --true-sequential are not supported with it")
        if "head" in groups or "embeddings" in groups:
            raise ValueError(
                "--params: 'head' and 'embeddings' lie outside the blocks; block-wise "
                "reconstruction cannot train them"
            )
        if args.calib is None:
            raise ValueError("--reconstruct: needs --calib (the block inputs)")


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
