"""The dense stage (train, load or measure the dense model) and the rewind points theta_k."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core import stamps
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage
from prunekit.recipes.files import locked, read_output, save_state

__all__ = ["dense_stage", "rewind_state"]


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in ("test_top1", "test_loss", "test_perplexity") if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def _init_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # CPU copies, as a file round trip would give
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _train_dense(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
    if ctx.dense_checkpoint is not None:
        where = ctx.dense_checkpoint(ctx.model)
        ctx.log(f"dense model: loaded {where}")
        iterations = 0
    elif ctx.pretrained:
        iterations = 0
    else:
        if directory is None:
            ctx.memory["init"] = _init_state(ctx.model)
        elif not (directory / "init.safetensors").is_file():
            save_state(ctx.model, directory / "init.safetensors")
        total = ctx.original.total
        ctx.log(f"dense training: {total} iterations" + (f" in {directory}" if directory else ""))
        ckpt = None if directory is None else directory / "ckpt"
        ctx.fit(ctx.original, total, None, ctx.train.seed, ckpt)
        iterations = total
    return {"metrics": ctx.metrics(), "iterations": iterations}


def _apply_dense(ctx: RunContext, record: dict[str, Any]) -> None:
    ctx.dense = record
    ctx.dense_iterations = int(record["iterations"])
    ctx.log(f"dense model: {_fmt(record['metrics'])}")


def dense_stage() -> Stage:
    """Train the dense model (or load ``dense_checkpoint``, or measure a ``pretrained`` one).

    In a run directory it lives in the shared dense directory with ``init.safetensors`` (for
    rewinding), ``model.safetensors`` and ``metrics.json``.
    """
    return Stage(
        "dense",
        _train_dense,
        _apply_dense,
        done_file="metrics.json",
        dense=True,
        keeps_masks=False,
    )


def rewind_state(ctx: RunContext, k: int) -> dict[str, torch.Tensor]:
    """theta_k of the dense run (k = 0: the initialisation), replayed from init when not stored.

    The first k steps of a fresh run are a pure function of (init, seed, schedule), so the
    replay gives the weights the dense run had at step k.
    """
    if "rewind" in ctx.memory:  # given by the caller (a pretrained model)
        return ctx.memory["rewind"]
    if ctx.dense_dir is None or ctx.run_dir is None:
        if "init" not in ctx.memory:
            raise ValueError("rewind_state: weight rewinding of a pretrained model needs theta_k")
        init = ctx.memory["init"]
        if k == 0:
            return init
        key = f"rewind_{k}"
        if key not in ctx.memory:
            ctx.memory[key] = _init_state(_replay(ctx, init, k))
        return ctx.memory[key]
    directory = ctx.dense_dir
    with stamps.stamped(ctx.dense_key, "dense"):
        if k == 0:
            return read_output(directory / "init.safetensors")
        path = directory / f"rewind_{k}.safetensors"
        with locked(directory):
            if not path.is_file():
                init = read_output(directory / "init.safetensors")
                save_state(_replay(ctx, init, k), path)
        return read_output(path)


def _replay(ctx: RunContext, init: dict[str, torch.Tensor], k: int) -> nn.Module:
    """A copy of the model trained for the first ``k`` steps of the dense run from ``init``."""
    scratch = copy.deepcopy(ctx.model)
    scratch.load_state_dict(init)
    ctx.fit(ctx.original, k, None, ctx.train.seed, None, model=scratch)
    return scratch
