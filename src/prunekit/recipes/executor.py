"""One executor for every recipe: stages run in order, each skipped when its outputs exist.

A :class:`Stage` names its directory (``<run>/<name>``, or the shared dense directory) and a
``run`` function that does the work on the :class:`~prunekit.recipes.context.RunContext` and
returns the stage's record (plain data). The executor, not the stage, handles what every
stage needs: the config-hash stamp on each output, skip-if-done (weights, masks and record are
loaded back), atomic outputs, removing the stage's Trainer checkpoints once it is done, and
the lock on the shared dense directory. ``apply`` merges the record into the context on both
paths, so a resumed run continues exactly as an uninterrupted one.

Without a run directory (the Python API's default) the stages simply run in memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.core import stamps
from prunekit.core.serialization import make_dirs
from prunekit.recipes.context import RunContext
from prunekit.recipes.files import (
    load_masks,
    load_output,
    locked,
    read_stage_json,
    save_masks,
    save_state,
    write_stage_json,
)

__all__ = ["KILL_AFTER_STAGE_ENV", "Stage", "execute", "stage_dir"]

# Fault injection for the resume tests: the process SIGKILLs itself right after the stage of
# this name has committed its outputs (as a crash at a stage boundary would).
KILL_AFTER_STAGE_ENV = "PRUNEKIT_KILL_AFTER_STAGE"


@dataclass(frozen=True)
class Stage:
    """One resumable step of a recipe.

    Attributes:
        name: the stage's directory below the run directory (and its stamp).
        run: ``run(ctx, directory)`` does the work and returns the stage's record;
            ``directory`` is None in memory (no checkpoints then).
        apply: ``apply(ctx, record)`` hands the record on (to ``ctx.phases``, ``ctx.extra``,
            ...); called after ``run`` and when the stage is skipped.
        done_file: the record's file; its presence marks the stage done.
        dense: the stage lives in the shared dense directory, keyed by the dense hash, locked.
        keeps_masks: the stage's masks (``ctx.masks``) are saved and loaded back.
        cleanup: folders of the stage removed once it is done (Trainer checkpoints).
    """

    name: str
    run: Callable[[RunContext, Path | None], dict[str, Any]]
    apply: Callable[[RunContext, dict[str, Any]], None] | None = None
    done_file: str = "stage.json"
    dense: bool = False
    keeps_masks: bool = True
    cleanup: tuple[str, ...] = ("ckpt",)


def stage_dir(ctx: RunContext, stage: Stage) -> Path | None:
    """Where ``stage`` keeps its outputs (None in memory)."""
    if ctx.run_dir is None:
        return None
    if stage.dense:
        assert ctx.dense_dir is not None, "a run directory needs a dense directory"
        return ctx.dense_dir
    return ctx.run_dir / stage.name


def execute(stages: Sequence[Stage], ctx: RunContext) -> RunContext:
    """Run (or skip) ``stages`` in order on ``ctx``; returns ``ctx`` with their state."""
    for stage in stages:
        record = _run_or_skip(stage, ctx)
        if stage.apply is not None:
            stage.apply(ctx, record)
    return ctx


def _run_or_skip(stage: Stage, ctx: RunContext) -> dict[str, Any]:
    directory = stage_dir(ctx, stage)
    if directory is None:
        return stage.run(ctx, None)
    key = ctx.dense_key if stage.dense else ctx.run_key
    lock = locked(directory) if stage.dense else contextlib.nullcontext()
    with lock, stamps.stamped(key, stage.name):
        done = directory / stage.done_file
        if done.is_file():
            load_output(ctx.model, directory / "model.safetensors")
            if stage.keeps_masks and (directory / "masks.safetensors").is_file():
                ctx.masks = load_masks(directory / "masks.safetensors", ctx.model)
            ctx.log(f"{stage.name.replace('_', ' ')}: done, skipped (reused {directory})")
            return read_stage_json(done)
        make_dirs(directory)
        record = stage.run(ctx, directory)
        save_state(ctx.model, directory / "model.safetensors")
        if stage.keeps_masks and ctx.masks is not None:
            save_masks(ctx.masks, directory / "masks.safetensors")
        write_stage_json(record, done)  # last: the stage is done
        for name in stage.cleanup:
            shutil.rmtree(directory / name, ignore_errors=True)
    if os.environ.get(KILL_AFTER_STAGE_ENV) == stage.name:
        os.kill(os.getpid(), signal.SIGKILL)
    return record
