"""PERP options of ``prunekit prune-llm`` (retraining and block-wise reconstruction).

The flags fill :class:`~prunekit.llm.perp.PerpConfig` and
:class:`~prunekit.llm.perp.ReconstructConfig`; the command checks them with the records' own
validation and runs :func:`~prunekit.llm.perp.perp_retrain` / :func:`~prunekit.llm.perp.reconstruct`,
the functions of the Python API, with those records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prunekit.commands._flags import Flag, add_flags, field_flags, flag_error, record_values
from prunekit.core.device import resolve_device
from prunekit.llm.engine import LLMPruneConfig
from prunekit.llm.perp import RECONSTRUCT_SKIPS, PerpConfig, ReconstructConfig

#: ``--retrain perp`` and the options it shares with ``--reconstruct`` (params, adapters).
RETRAIN_FLAGS = (
    Flag("--retrain", "retrain after pruning: next-token loss for decoders, masked-LM loss for "
         "encoders with an MLM head, block reconstruction for other encoders (default: no "
         "retraining)", choices=["perp"]),
    Flag("--params", "comma-separated groups to train: biases, norms, head, embeddings, "
         "masklora | scalelora | lora, full (default: %(default)s)", "params",
         default="biases,norms,masklora"),
    Flag("--retrain-data", "text / .safetensors ids to retrain on (default: --calib)"),
    Flag("--retrain-steps", "optimizer steps (default: %(default)s)", "steps", int),
    Flag("--retrain-lr", "peak AdamW learning rate (default: %(default)s)", "lr", float),
    Flag("--retrain-batch-size", "windows per step (default: %(default)s)", "batch_size", int),
    Flag("--retrain-seqlen", "tokens per window (default: --seqlen)", "seqlen", int),
    Flag("--lora-rank", "adapter rank (default: %(default)s)", "rank", int),
    Flag("--lora-alpha", "adapter scale numerator (default: the rank)", "alpha", float),
    Flag("--gradient-checkpointing", "recompute block activations in the backward pass "
         "(default: off)", "gradient_checkpointing", action="store_true"),
    Flag("--amp", "autocast: bf16/fp16 on CUDA when auto (default: %(default)s)", "amp",
         choices=["auto", "bf16", "fp16", "off"]),
)  # fmt: skip

#: ``--reconstruct``: steps and learning rate per block (the rest as for ``--retrain``).
RECONSTRUCT_FLAGS = (
    Flag("--reconstruct", "prune block by block, training each block's --params to match the "
         "dense outputs (default: off)", action="store_true"),
    Flag("--reconstruct-steps", "steps per block (default: %(default)s)", "steps", int),
    Flag("--reconstruct-lr", "AdamW learning rate (default: %(default)s)", "lr", float),
)  # fmt: skip


def add_perp_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--retrain perp``, ``--params`` ... ``--reconstruct`` to the prune-llm parser."""
    g = p.add_argument_group(
        "PERP retraining",
        "retrain a small parameter subset after pruning (masks kept exactly), and/or prune with "
        "block-wise reconstruction",
    )
    add_flags(g, RETRAIN_FLAGS, PerpConfig)
    add_flags(g, RECONSTRUCT_FLAGS, ReconstructConfig)


def perp_options(args: argparse.Namespace) -> PerpConfig:
    """The :func:`~prunekit.llm.perp.perp_retrain` options the flags ask for."""
    values = record_values(args, RETRAIN_FLAGS)
    values["seqlen"] = args.retrain_seqlen or args.seqlen
    return PerpConfig.from_values({**values, "seed": args.seed, "progress": not args.no_progress})


def reconstruct_options(args: argparse.Namespace) -> ReconstructConfig:
    """The training options of :func:`~prunekit.llm.perp.reconstruct` the flags ask for."""
    values = {**record_values(args, RETRAIN_FLAGS), **record_values(args, RECONSTRUCT_FLAGS)}
    return ReconstructConfig.from_values(values)


def check_perp_args(model: Any, args: argparse.Namespace, tok: Any) -> None:
    """Check every retraining / reconstruction option against ``model`` before pruning starts.

    An encoder without a masked-LM head has no token logits to retrain on: ``--retrain perp``
    then prunes with block-wise reconstruction against the dense model's hidden states
    (``--reconstruct``), and says so.
    """
    from prunekit.llm.perp import check_retrain, retrain_objective

    if args.retrain != "perp" and not args.reconstruct:
        return
    if args.retrain == "perp" and not args.reconstruct:
        if (args.retrain_data or args.calib) is None:
            raise ValueError("--retrain perp: needs --retrain-data or --calib")
        if args.retrain_data and not Path(args.retrain_data).exists():
            raise FileNotFoundError(f"--retrain-data: no such file {args.retrain_data!r}")
        if retrain_objective(model, args.adapter) is None:
            print(
                f"prunekit prune-llm: note: {type(model).__name__} is an encoder without a "
                "masked-LM head; --retrain perp runs block-wise reconstruction against the "
                "dense model's hidden states (--reconstruct, --reconstruct-steps)",
                file=sys.stderr,
            )
            args.reconstruct = True
        else:
            flags = field_flags(RETRAIN_FLAGS)
            flags["seqlen"] = "--retrain-seqlen" if args.retrain_seqlen else "--seqlen"
            config = perp_options(args)
            try:
                config.validate()
                check_retrain(
                    model,
                    config.params,
                    tokenizer=tok,
                    amp=config.amp,
                    device=resolve_device(args.device, "--device"),
                    adapter=args.adapter,
                    seqlen=config.seqlen,
                )
            except ValueError as err:
                raise flag_error(err, flags, "--retrain perp") from None
    if args.reconstruct:
        if args.owl or args.true_sequential:
            raise ValueError("--reconstruct: --owl and --true-sequential are not supported with it")
        flags = {**field_flags(RETRAIN_FLAGS), **field_flags(RECONSTRUCT_FLAGS)}
        try:
            reconstruct_options(args).validate()
        except ValueError as err:
            raise flag_error(err, flags, "--reconstruct") from None
        if args.calib is None:
            raise ValueError("--reconstruct: needs --calib (the block inputs)")


def reconstruct_from_args(
    model: Any, args: argparse.Namespace, prune: LLMPruneConfig, calibration: Any, tok: Any
) -> tuple[Any, dict]:
    """Run :func:`prunekit.llm.perp.reconstruct` with the prune-llm options."""
    from prunekit.llm.perp import reconstruct

    if args.owl or args.true_sequential:
        raise ValueError("--reconstruct: --owl and --true-sequential are not supported with it")
    return reconstruct(
        model,
        calibration=calibration,
        tokenizer=tok,
        device=resolve_device(args.device, "--device"),
        adapter=args.adapter,
        **prune.kwargs(skip=RECONSTRUCT_SKIPS),
        **reconstruct_options(args).kwargs(),
    )


def retrain_from_args(
    model: Any, masks: Any, args: argparse.Namespace, data: Any, tok: Any
) -> dict[str, Any]:
    """Run :func:`prunekit.llm.perp.perp_retrain` with the prune-llm options."""
    from prunekit.llm.perp import perp_retrain

    if data is None:
        raise ValueError("--retrain perp: needs --retrain-data or --calib")
    return perp_retrain(
        model,
        masks,
        data,
        tokenizer=tok,
        device=resolve_device(args.device, "--device"),
        adapter=args.adapter,
        **perp_options(args).kwargs(),
    )
