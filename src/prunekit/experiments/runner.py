"""Run one experiment end to end in a resumable run directory.

A run is a chain of stages, each of which skips itself when its outputs exist (OpenLTH style);
inside a stage the Trainer checkpoints every ``train.checkpoint_every`` iterations, so a run killed
at any point resumes from its last checkpoint and ends with the same result::

    <output>/dense/<dense-hash>/      shared by every run with the same model, data, train, seed
        init.safetensors  model.safetensors  metrics.json  [rewind_<k>.safetensors]  ckpt/
    <output>/runs/<name>-<config-hash>/
        config.yaml  log.txt
        phase_<j>/  masks.safetensors  model.safetensors  phase.json  ckpt/
        final/      model.compressed.safetensors  masks.safetensors  metrics.json
        result.json                         (written last: the run is finished)
    <output>/results.sqlite                 one row per run (config hash, status, metrics)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from prunekit.core import stamps
from prunekit.core.errors import DeviceError, FileFormatError, StaleFileError
from prunekit.core.masks import MaskSet
from prunekit.core.prune import compute_masks, pruning_plan
from prunekit.core.schedules import BIMP, GMP, IMP
from prunekit.core.serialization import (
    check_state_fits,
    clean_stale_temps,
    load_safetensors,
    make_dirs,
    open_append,
    open_lock,
    output_root,
    read_json,
    read_safetensors,
    save_safetensors,
    write_json,
    write_text_atomic,
)
from prunekit.data import create_dataset
from prunekit.data.base import DatasetBundle
from prunekit.experiments.config import (
    RECIPE_SCHEDULES,
    TRAINING_SCHEDULES,
    ExperimentConfig,
    config_hash,
    dense_hash,
    ignores_sparsity,
)
from prunekit.experiments.store import ResultsStore
from prunekit.experiments.typed import ConfigError, to_dict
from prunekit.training.lr import LRW, LRSchedule, make_lr_schedule, make_retrain_schedule
from prunekit.training.recipes import GMPCallback, PruneSpec, TrainSpec, pruning_norm_change
from prunekit.training.trainer import Callback, Trainer, evaluate, make_optimizer

__all__ = [
    "RunLog",
    "build_data",
    "build_model",
    "dense_dir",
    "dry_run",
    "run_dir",
    "run_experiment",
    "train_dense",
]


# ---------------------------------------------------------------------- paths and logging
def run_dir(cfg: ExperimentConfig) -> Path:
    """``<output>/runs/<name>[-<method>-sp<sparsity %>-seed<seed>]-<10 hex digits of the hash>``.

    The method part is added for sweep arms (``cfg.method`` set) so that folders are readable.
    """
    parts = [cfg.name]
    if cfg.method:
        label = re.sub(r"[^A-Za-z0-9_.\-]", "_", cfg.method)
        level = (
            f"keep{round(cfg.data_prune.fraction * 100, 2):g}"
            if cfg.data_prune.enabled
            else f"sp{round(cfg.prune.sparsity * 100, 2):g}"
        )
        parts += [label, level, f"seed{cfg.seed}"]
    return Path(cfg.output) / "runs" / "-".join([*parts, config_hash(cfg)[:10]])


def _dense_schedule_name(cfg: ExperimentConfig) -> str:
    # Budgeted IMP trains the dense model with a linear-decay schedule.
    return "linear" if cfg.prune.schedule == "bimp" else cfg.train.lr_schedule


def dense_dir(cfg: ExperimentConfig) -> Path:
    """``<output>/dense/<dense hash>``: shared by runs with the same model, data, train, seed."""
    return Path(cfg.output) / "dense" / dense_hash(cfg, _dense_schedule_name(cfg))[:12]


class RunLog:
    """Appends timestamped lines to ``log.txt`` and echoes them (unless ``quiet``)."""

    def __init__(self, path: Path | None, quiet: bool = False) -> None:
        self.path = path
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.path is not None:
            with open_append(self.path) as fh:  # O_NOFOLLOW: never appends to a planted link
                fh.write(line + "\n")
        if not self.quiet:
            print(line, flush=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (parallel runs sharing a dense model wait for it).

    Holding it, temp files a killed process left in ``directory`` are removed.
    """
    make_dirs(directory)
    with open_lock(directory / ".lock") as fh:  # no truncation, no symlink
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            clean_stale_temps(directory)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_state(model: nn.Module, path: Path, meta: dict[str, Any] | None = None) -> None:
    # Clones: tied weights share storage, which safetensors refuses to write twice.
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_safetensors(state, path, _with_stamp(meta or {}))


def _with_stamp(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` plus the active stage stamp (config hash and stage), when a stage is running."""
    stamp = stamps.active()
    return data if stamp is None else {**data, stamps.STAMP_KEY: stamp.to_json()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from safetensors (plain, prunekit or ``save_compressed``) or, for ``.pt`` /
    ``.pth`` / ``.bin`` files, ``torch.load(weights_only=True)`` (a ``state_dict`` key is used).

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: a truncated or corrupt file, or one that holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dense_checkpoint: no such file {str(path)!r}")
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler raises many types for a corrupt file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise FileFormatError(
                path, f"not a readable weights-only torch file: {reason}"
            ) from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
        ):
            raise FileFormatError(path, "does not hold a state_dict (names to tensors)")
        return data
    tensors, raw = read_safetensors(path)
    if "prunekit" in raw:
        from prunekit.export import FORMAT, load_compressed

        _, meta = load_safetensors(path)
        if meta.get("format") == FORMAT:
            return load_compressed(path)
    return tensors


def _load_state(model: nn.Module, path: Path) -> None:
    """Load a user-given weights file (floating dtypes are cast, as load_state_dict does);
    checked whole before the model changes."""
    state = read_state_dict(path)
    check_state_fits(model, state, path, cast_floats=True)
    model.load_state_dict(state)


def _read_output(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a file a stage wrote, refused when another config or stage wrote it."""
    tensors, meta = load_safetensors(path)
    stamps.check(meta.get(stamps.STAMP_KEY), path)
    return tensors


def _load_output(model: nn.Module, path: Path) -> None:
    state = _read_output(path)
    check_state_fits(model, state, path)
    model.load_state_dict(state)


def _save_masks(masks: MaskSet, path: Path) -> None:
    masks.save(path, metadata=_with_stamp(dict(getattr(masks, "metadata", None) or {})))


def load_dense_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the user's ``dense_checkpoint`` into ``model``, checked whole before any weight
    changes (a mismatch names the file); a plain transformers state_dict fits an ``hf`` model."""
    from prunekit.experiments.sources import HFClassifier

    state = read_state_dict(path)
    if isinstance(model, HFClassifier) and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    check_state_fits(model, state, path, cast_floats=True)
    model.load_state_dict(state)


def record_model(root: Path, model: nn.Module, spec: dict[str, Any]) -> None:
    """``model_spec.json``: how to rebuild this run's architecture without the config's code
    (the fully resolved kwargs; for a transformers model its config as data)."""
    from prunekit.experiments.sources import hf_config_dict

    record = dict(spec)
    hf_config = hf_config_dict(model)
    if hf_config is not None:
        record["hf_config"] = hf_config
    write_json(record, root / "model_spec.json")


def record_reference(final_dir: Path, model: nn.Module, data: DatasetBundle) -> None:
    """``final/reference.safetensors``: an example input and the final model's output on it (eval
    mode), so that a reloaded model can be checked bit for bit."""
    example = _example(data)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example.to(device))
    finally:
        model.train(was_training)
    if isinstance(output, torch.Tensor):
        save_safetensors(
            {
                "input": example.detach().cpu().contiguous(),
                "output": output.detach().cpu().contiguous(),
            },
            final_dir / "reference.safetensors",
            {"kind": "reference", "device": str(device)},  # kernels differ across devices
        )


def _load_masks(path: Path, model: nn.Module) -> MaskSet:
    # Masks live on the model's device (it is on the GPU after training there).
    masks = MaskSet.load(path, device=next(model.parameters()).device)
    stamps.check(masks.metadata.get(stamps.STAMP_KEY), path)
    try:
        masks.validate(model)
    except ValueError as err:
        raise FileFormatError(path, f"does not fit the model: {err}") from None
    return masks


def _write_stage_json(data: dict[str, Any], path: Path) -> None:
    write_json(_with_stamp(data), path)


def _read_stage_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise FileFormatError(path, "expected a JSON object")
    data = dict(data)
    stamps.check(data.pop(stamps.STAMP_KEY, None), path)
    return data


# ---------------------------------------------------------------------- building blocks
def build_data(cfg: ExperimentConfig) -> DatasetBundle:
    """The data set of ``cfg.data``: a registered one, or the user's ``data.factory``."""
    if cfg.data.factory is not None:
        from prunekit.experiments.sources import build_user_data

        return build_user_data(cfg)
    return create_dataset(cfg.data.name, **cfg.data.kwargs)


def model_kwargs(cfg: ExperimentConfig, data: DatasetBundle) -> dict[str, Any]:
    """``cfg.model.kwargs`` plus input / output sizes taken from the data set when left out."""
    return dict(model_spec(cfg, data)["kwargs"])


def model_spec(cfg: ExperimentConfig, data: DatasetBundle) -> dict[str, Any]:
    """The fully resolved model (data-dependent kwargs included), recorded in the run dir."""
    from prunekit.experiments.sources import model_spec as _spec

    return _spec(cfg, data)


def build_model(cfg: ExperimentConfig, data: DatasetBundle) -> nn.Module:
    """The model of ``cfg.model``, initialised under ``torch.manual_seed(cfg.seed)``."""
    from prunekit.experiments.sources import build_from_spec

    spec = model_spec(cfg, data)
    torch.manual_seed(cfg.seed)
    return build_from_spec(spec, allow_import=cfg.allow_import, search_path=cfg.source_dir)


def _original_schedule(cfg: ExperimentConfig, data: DatasetBundle, name: str) -> LRSchedule:
    per_epoch = max(1, math.ceil(len(data.train) / cfg.train.batch_size))
    total = max(1, int(round(cfg.train.epochs * per_epoch)))
    return make_lr_schedule(name, cfg.train.lr, total)


def _iterations(cfg: ExperimentConfig, data: DatasetBundle, epochs: float) -> int:
    per_epoch = max(1, math.ceil(len(data.train) / cfg.train.batch_size))
    return int(round(epochs * per_epoch))


def _calibration(cfg: ExperimentConfig, data: DatasetBundle) -> list[tuple[torch.Tensor, ...]]:
    n, bs = cfg.data.calibration_batches, cfg.data.calibration_batch_size
    x, y = data.train.x, data.train.y
    return [
        (x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs]) for i in range(n) if i * bs < len(x)
    ]


def _compute_masks(
    cfg: ExperimentConfig,
    model: nn.Module,
    data: DatasetBundle,
    target: float,
    masks: MaskSet | None,
    seed: int,
) -> MaskSet:
    from prunekit.criteria import create_criterion

    p = cfg.prune
    needs_data = create_criterion(p.criterion, **p.criterion_options).requires_data
    return compute_masks(
        model,
        target,
        p.criterion,
        p.allocation,
        targets=p.targets.build(),
        masks=masks,
        min_keep=p.min_keep,
        data=_calibration(cfg, data) if needs_data else None,
        seed=seed,
        criterion_options=p.criterion_options or None,
    )


def _fit(
    cfg: ExperimentConfig,
    model: nn.Module,
    data: DatasetBundle,
    schedule: LRSchedule,
    iterations: int,
    masks: MaskSet | None,
    seed: int,
    ckpt: Path | None,
    callbacks: list[Callback] | None = None,
) -> Trainer:
    t = cfg.train
    optimizer = make_optimizer(model, t.optimizer, t.lr, t.momentum, t.weight_decay, t.nesterov)
    trainer = Trainer(
        model,
        data.train,
        optimizer=optimizer,
        lr_schedule=schedule,
        iterations=iterations,
        batch_size=t.batch_size,
        masks=masks,
        task=data.task,
        augment=data.augment,
        device=t.device,
        seed=seed,
        callbacks=callbacks or [],
        progress=t.progress,
        checkpoint_dir=ckpt,
        checkpoint_every=t.checkpoint_every if ckpt is not None else None,
    )
    trainer.fit(resume=True)
    return trainer


def _metrics(model: nn.Module, data: DatasetBundle) -> dict[str, float]:
    out: dict[str, float] = {}
    if len(data.val):
        out.update({f"val_{k}": v for k, v in evaluate(model, data.val, task=data.task).items()})
    out.update({f"test_{k}": v for k, v in evaluate(model, data.test, task=data.task).items()})
    return out


# ---------------------------------------------------------------------- stages
@dataclass
class _Context:
    cfg: ExperimentConfig
    data: DatasetBundle
    log: RunLog
    original: LRSchedule


def _dense_stage(ctx: _Context, model: nn.Module) -> dict[str, Any]:
    """Train (or load) the dense model; its weights end up in ``model``."""
    cfg, directory = ctx.cfg, dense_dir(ctx.cfg)
    with _locked(directory), _dense_stamp(cfg):
        done = directory / "metrics.json"
        if done.is_file():
            _load_output(model, directory / "model.safetensors")
            ctx.log(f"dense model: reused {directory}")
            return _read_stage_json(done)
        if cfg.dense_checkpoint is not None:
            load_dense_checkpoint(model, cfg.dense_checkpoint)
            ctx.log(f"dense model: loaded {cfg.dense_checkpoint}")
            iterations = 0
        else:
            if not (directory / "init.safetensors").is_file():
                _save_state(model, directory / "init.safetensors")
            ctx.log(f"dense training: {ctx.original.total} iterations in {directory}")
            _fit(cfg, model, ctx.data, ctx.original, ctx.original.total, None, cfg.seed,
                 directory / "ckpt")  # fmt: skip
            iterations = ctx.original.total
        _save_state(model, directory / "model.safetensors")
        result = {"metrics": _metrics(model, ctx.data), "iterations": iterations}
        _write_stage_json(result, done)
        shutil.rmtree(directory / "ckpt", ignore_errors=True)
        ctx.log(f"dense model: {_fmt(result['metrics'])}")
        return result


def _dense_stamp(cfg: ExperimentConfig) -> contextlib.AbstractContextManager[stamps.Stamp]:
    """Files of the shared dense directory record the dense slice of the config."""
    return stamps.stamped(dense_hash(cfg, _dense_schedule_name(cfg)), "dense")


def train_dense(cfg: ExperimentConfig, *, quiet: bool = True) -> dict[str, Any]:
    """Train (or reuse) the dense model of ``cfg`` in its shared dense directory."""
    check_device(cfg.train.device)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    data = build_data(cfg)
    model = build_model(cfg, data)
    log = RunLog(dense_dir(cfg) / "log.txt", quiet=quiet)
    ctx = _Context(cfg, data, log, _original_schedule(cfg, data, _dense_schedule_name(cfg)))
    with output_root(cfg.output):
        return _dense_stage(ctx, model)


def _rewind_state(ctx: _Context, model: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """theta_k of the dense run (k = 0: the initialisation), replayed from init if not stored."""
    directory = dense_dir(ctx.cfg)
    with _dense_stamp(ctx.cfg):
        if k == 0:
            return _read_output(directory / "init.safetensors")
        path = directory / f"rewind_{k}.safetensors"
        with _locked(directory):
            if not path.is_file():
                # The first k steps of a fresh run are a pure function of (init, seed, schedule).
                scratch = build_model(ctx.cfg, ctx.data)
                _load_output(scratch, directory / "init.safetensors")
                _fit(ctx.cfg, scratch, ctx.data, ctx.original, k, None, ctx.cfg.seed, None)
                _save_state(scratch, path)
        return _read_output(path)


@dataclass
class _Phase:
    target: float
    iterations: int
    schedule_name: str


def _phases(ctx: _Context) -> list[_Phase]:
    cfg, p = ctx.cfg, ctx.cfg.prune
    retrain_epochs = cfg.retrain.epochs
    default_its = (
        ctx.original.total if retrain_epochs is None else _iterations(cfg, ctx.data, retrain_epochs)
    )
    if p.schedule == "one_shot":
        return [_Phase(p.sparsity, default_its, cfg.retrain.schedule)]
    if p.schedule == "bimp":
        sched = BIMP(p.sparsity, p.phases, _iterations(cfg, ctx.data, retrain_epochs or 0.0))
        return [_Phase(t, b, "allr") for t, b in zip(sched.targets(), sched.budgets())]
    imp = IMP(p.sparsity, p.phases)
    if p.rewind == "weights":
        if p.rewind_iteration >= ctx.original.total:
            raise ConfigError(
                f"prune.rewind_iteration: expected an iteration below the dense run's "
                f"{ctx.original.total}, got {p.rewind_iteration}"
            )
        its = ctx.original.total - p.rewind_iteration
        return [_Phase(t, its, "rewind_weights") for t in imp.targets()]
    name = "lrw" if p.rewind == "lr" else cfg.retrain.schedule
    return [_Phase(t, default_its, name) for t in imp.targets()]


def _phase_schedule(
    ctx: _Context, phase: _Phase, model: nn.Module, before: MaskSet | None, after: MaskSet
) -> LRSchedule | None:
    if phase.iterations <= 0:
        return None
    if phase.schedule_name in ("rewind_weights", "lrw"):
        return LRW(ctx.original, phase.iterations)
    if phase.schedule_name == "allr":
        d, s = pruning_norm_change(model, before, after)
        return make_retrain_schedule(
            "allr", ctx.original, phase.iterations, norm_change=d, pruned_fraction=max(s, 1e-12)
        )
    return make_retrain_schedule(phase.schedule_name, ctx.original, phase.iterations)


def _prune_retrain_stages(
    ctx: _Context, model: nn.Module, root: Path
) -> tuple[MaskSet, list[dict[str, Any]]]:
    cfg = ctx.cfg
    masks: MaskSet | None = None
    results: list[dict[str, Any]] = []
    for j, phase in enumerate(_phases(ctx), start=1):
        with stamps.stamped(config_hash(cfg), f"phase_{j}"):
            masks = _phase(ctx, model, root, j, phase, masks, results)
    assert masks is not None
    return masks, results


def _phase(
    ctx: _Context,
    model: nn.Module,
    root: Path,
    j: int,
    phase: _Phase,
    masks: MaskSet | None,
    results: list[dict[str, Any]],
) -> MaskSet:
    """Phase ``j`` of prune-retrain (skipped when its outputs exist); returns its masks."""
    cfg = ctx.cfg
    pdir = root / f"phase_{j}"
    done = pdir / "phase.json"
    if done.is_file():
        _load_output(model, pdir / "model.safetensors")
        masks = _load_masks(pdir / "masks.safetensors", model)
        results.append(_read_stage_json(done))
        ctx.log(f"phase {j}: done, skipped")
        return masks
    make_dirs(pdir)
    if (pdir / "masks.safetensors").is_file():
        new = _load_masks(pdir / "masks.safetensors", model)
    else:
        new = _compute_masks(cfg, model, ctx.data, phase.target, masks, cfg.seed + j)
        _save_masks(new, pdir / "masks.safetensors")
    schedule = _phase_schedule(ctx, phase, model, masks, new)
    if phase.schedule_name == "rewind_weights":
        model.load_state_dict(_rewind_state(ctx, model, cfg.prune.rewind_iteration))
    new.apply(model)
    pruned = _metrics(model, ctx.data)
    ctx.log(
        f"phase {j}: pruned to {new.sparsity:.4f} ({_fmt(pruned)}); retraining "
        f"{phase.iterations} iterations ({phase.schedule_name})"
    )
    if schedule is not None:
        _fit(cfg, model, ctx.data, schedule, phase.iterations, new, cfg.seed + 1000 * j,
             pdir / "ckpt")  # fmt: skip
    lr0 = 0.0
    if schedule is not None:
        lr0 = float(getattr(schedule, "eta0", schedule.lr_at(0)))
    result = {
        "phase": j,
        "target_sparsity": phase.target,
        "sparsity": new.sparsity,
        "retrain_schedule": phase.schedule_name,
        "retrain_iterations": phase.iterations,
        "lr0": lr0,
        "pruned": pruned,
        "retrained": _metrics(model, ctx.data),
    }
    _save_state(model, pdir / "model.safetensors")
    _write_stage_json(result, done)
    shutil.rmtree(pdir / "ckpt", ignore_errors=True)
    ctx.log(f"phase {j}: retrained ({_fmt(result['retrained'])})")
    results.append(result)
    return new


class _GMP(GMPCallback):
    """GMP with the config's criterion options and calibration data."""

    def __init__(self, schedule: GMP, ctx: _Context) -> None:
        super().__init__(schedule, PruneSpec(), seed=ctx.cfg.seed)
        self.ctx = ctx

    def _maybe_prune(self, trainer: Trainer) -> None:
        t = trainer.iteration
        if t not in self._steps:
            return
        target = self.schedule.sparsity_at(t)
        current = trainer.masks.sparsity if trainer.masks is not None else 0.0
        if target <= current and trainer.masks is not None:
            return
        new = _compute_masks(
            self.ctx.cfg, trainer.model, self.ctx.data, target, trainer.masks, self.seed + t
        )
        trainer.set_masks(new)
        self.trajectory.append((t, new.sparsity))


def _gmp_stage(ctx: _Context, model: nn.Module, root: Path) -> tuple[MaskSet, list[dict]]:
    cfg, p = ctx.cfg, ctx.cfg.prune
    pdir = root / "phase_1"
    done = pdir / "phase.json"
    if done.is_file():
        _load_output(model, pdir / "model.safetensors")
        return _load_masks(pdir / "masks.safetensors", model), [_read_stage_json(done)]
    try:
        schedule = GMP.for_training(
            p.sparsity, ctx.original.total, p.gmp_start, p.gmp_end, p.gmp_frequency
        )
    except ValueError as err:
        raise ConfigError(f"prune.gmp_frequency / gmp_start / gmp_end: {err}") from None
    ctx.log(f"gmp: training {ctx.original.total} iterations, pruning to {p.sparsity}")
    trainer = _fit(cfg, model, ctx.data, ctx.original, ctx.original.total, None, cfg.seed,
                   pdir / "ckpt", callbacks=[_GMP(schedule, ctx)])  # fmt: skip
    masks = trainer.masks if trainer.masks is not None else MaskSet()
    trainer.set_masks(None)
    final = _metrics(model, ctx.data)
    result = {
        "phase": 1,
        "target_sparsity": p.sparsity,
        "sparsity": masks.sparsity,
        "retrain_schedule": "during_training",
        "retrain_iterations": 0,
        "lr0": ctx.original.lr_at(0),
        "pruned": final,
        "retrained": final,
    }
    _save_masks(masks, pdir / "masks.safetensors")
    _save_state(model, pdir / "model.safetensors")
    _write_stage_json(result, done)
    shutil.rmtree(pdir / "ckpt", ignore_errors=True)
    return masks, [result]


def _train_spec(cfg: ExperimentConfig) -> TrainSpec:
    t = cfg.train
    return TrainSpec(
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        lr_schedule=t.lr_schedule,
        optimizer=t.optimizer,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
        seed=cfg.seed,
        device=t.device,
        progress=t.progress,
    )


def _recipe_stage(ctx: _Context, model: nn.Module, root: Path) -> tuple[MaskSet, list[dict]]:
    """RigL / GraNet / pruning at initialisation: one checkpointed training run."""
    from prunekit.training import dst_recipes

    cfg, p = ctx.cfg, ctx.cfg.prune
    pdir = root / "phase_1"
    done = pdir / "phase.json"
    if done.is_file():
        _load_output(model, pdir / "model.safetensors")
        return _load_masks(pdir / "masks.safetensors", model), [_read_stage_json(done)]
    common: dict[str, Any] = {
        "targets": p.targets.build(),
        "checkpoint_dir": pdir / "ckpt",
        "checkpoint_every": cfg.train.checkpoint_every,
    }
    ctx.log(f"{p.schedule}: training {ctx.original.total} iterations at sparsity {p.sparsity}")
    if p.schedule == "at_init":
        result = dst_recipes.run_at_init(
            model,
            ctx.data,
            _train_spec(cfg),
            p.criterion,
            p.sparsity,
            allocation=p.allocation,
            num_batches=cfg.data.calibration_batches,
            criterion_batch_size=cfg.data.calibration_batch_size,
            criterion_options=p.criterion_options or None,
            **common,
        )
    else:
        fn = getattr(dst_recipes, f"run_{p.schedule}")
        result = fn(
            model,
            ctx.data,
            _train_spec(cfg),
            sparsity=p.sparsity,
            allocation=p.allocation,
            **common,
            **p.options,
        )
    masks = result.masks if result.masks is not None else MaskSet.from_model(model)
    phase = dataclasses.asdict(result.phases[-1])
    _save_masks(masks, pdir / "masks.safetensors")
    _save_state(model, pdir / "model.safetensors")
    _write_stage_json(phase, done)
    shutil.rmtree(pdir / "ckpt", ignore_errors=True)
    return masks, [phase]


def _retrain_epochs(cfg: ExperimentConfig) -> float:
    # retrain.epochs: null means the dense run's length
    return cfg.train.epochs if cfg.retrain.epochs is None else cfg.retrain.epochs


def _run_soups(ctx: _Context, model: nn.Module, sdir: Path) -> Any:
    from prunekit.training.soups_recipe import run_soups

    cfg, p = ctx.cfg, ctx.cfg.prune
    spec = PruneSpec(p.sparsity, p.criterion, p.allocation, p.targets.build(), p.min_keep)
    return run_soups(
        model,
        ctx.data,
        _train_spec(cfg),
        spec,
        phases=p.phases,
        retrain_epochs=_retrain_epochs(cfg),
        retrain_schedule=cfg.retrain.schedule,
        out_dir=sdir,
        pretrained=True,
        checkpoint_every=cfg.train.checkpoint_every,
        **p.options,
    )


def _run_sap(ctx: _Context, model: nn.Module, sdir: Path) -> Any:
    from prunekit.training.dst_recipes import run_sap

    cfg, p = ctx.cfg, ctx.cfg.prune
    return run_sap(
        model,
        ctx.data,
        _train_spec(cfg),
        targets=p.targets.build(),
        retrain_epochs=cfg.retrain.epochs,
        retrain_schedule=cfg.retrain.schedule,
        pretrained=True,
        **p.options,
    )


def _run_sfw(ctx: _Context, model: nn.Module, sdir: Path) -> Any:
    from prunekit.training.sfw_recipe import SFWSpec, run_sfw

    cfg, p = ctx.cfg, ctx.cfg.prune
    options = dict(p.options)
    fields = options.pop("sfw", {})
    sfw = None if fields is None else SFWSpec(**fields, targets=p.targets.build())
    compress = options.get("compress", "magnitude")
    if "levels" not in options and compress != "low_rank":
        options["levels"] = [p.sparsity]  # one level: the config's sparsity
    return run_sfw(
        model,
        ctx.data,
        _train_spec(cfg),
        sfw,
        allocation=p.allocation,
        retrain_epochs=_retrain_epochs(cfg),
        retrain_schedule=cfg.retrain.schedule,
        out_dir=sdir,
        checkpoint_every=cfg.train.checkpoint_every,
        **options,
    )


def _sfw_final_model(ctx: _Context, model: nn.Module, result: Any) -> MaskSet:
    """The trained model compressed at the last level (masks; BatchNorm recalibrated as the
    recipe does). Low-rank levels change the architecture: the model stays uncompressed."""
    from prunekit.training.sfw_recipe import _bn_batches
    from prunekit.training.soups import recalibrate_batchnorm

    if result.masks is None:
        return MaskSet()
    masks = result.masks.to(next(model.parameters()).device)
    masks.apply(model)
    options = ctx.cfg.prune.options
    if options.get("recalibrate_bn", True):
        batches = _bn_batches(
            model, ctx.data, ctx.cfg.train.batch_size, int(options.get("bn_batches", 8))
        )
        if batches:
            recalibrate_batchnorm(model, batches, device=next(model.parameters()).device)
    return masks


def _sfw_levels(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report entry per compression level (low_rank: sparsity = parameters removed).

    ``saved`` marks the level of the saved model (the last one; none for low_rank)."""
    out = []
    for i, ph in enumerate(phases):
        level = float(ph["target_sparsity"])
        if ph.get("compress") == "low_rank":
            level = max(0.0, 1.0 - float(ph.get("params_ratio", 1.0)))
        out.append(
            {
                "level": float(ph["target_sparsity"]),
                "target_sparsity": round(level, 6),
                "sparsity": ph["sparsity"],
                "final": ph["retrained"] or ph["pruned"],
                "saved": i == len(phases) - 1 and ph.get("compress") != "low_rank",
            }
        )
    return out


def _whole_recipe_stage(
    ctx: _Context, model: nn.Module, root: Path
) -> tuple[MaskSet, list[dict[str, Any]], dict[str, Any]]:
    """Soups, SFW or SAP: one recipe call in ``<run>/recipe``; returns masks, phases and the
    result's extra entries. Soups and SFW resume inside the recipe from ``<run>/recipe``
    (ingredient files, Trainer checkpoints); SAP reruns its rounds when interrupted."""
    p = ctx.cfg.prune
    sdir = root / "recipe"
    done = sdir / "stage.json"
    if done.is_file():
        _load_output(model, sdir / "model.safetensors")
        stage = _read_stage_json(done)
        return _load_masks(sdir / "masks.safetensors", model), stage["phases"], stage["extra"]
    make_dirs(sdir)
    ctx.log(f"{p.schedule}: running the recipe in {sdir}")
    run = {"soups": _run_soups, "sfw": _run_sfw, "sap": _run_sap}[p.schedule]
    result = run(ctx, model, sdir)
    phases = [dataclasses.asdict(ph) for ph in result.phases]
    extra: dict[str, Any] = {"final": result.final}
    if result.details:
        extra["details"] = result.details
    if p.schedule == "sfw":
        extra["trained"] = result.dense  # the SFW-trained model before compression
        extra["levels"] = _sfw_levels(phases)
        extra["iterations"] = {"dense": result.dense_iterations,
                               "retrain": result.retrain_iterations}  # fmt: skip
        extra["max_norm_ratio"] = result.config.get("max_norm_ratio")
        masks = _sfw_final_model(ctx, model, result)
    else:
        masks = result.masks if result.masks is not None else MaskSet.from_model(model)
    if p.schedule == "sap":
        # SAP picks its own sparsity: the report lists it where it landed (0.1 % steps)
        extra["target_sparsity"] = round(masks.sparsity, 3)
    _save_masks(masks, sdir / "masks.safetensors")
    _save_state(model, sdir / "model.safetensors")
    _write_stage_json({"phases": phases, "extra": extra}, done)
    for ckpt in ("train", "dense"):
        shutil.rmtree(sdir / ckpt, ignore_errors=True)
    return masks, phases, extra


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in ("test_top1", "test_loss", "test_perplexity") if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def _example(data: DatasetBundle) -> torch.Tensor:
    return data.test.x[:1]


def final_metrics(
    cfg: ExperimentConfig, model: nn.Module, data: DatasetBundle, masks: MaskSet
) -> dict[str, Any]:
    """Costs, file sizes, latency and PQ indices of the final sparse model."""
    from prunekit.core.metrics import file_sizes, measure_latency, model_costs, pq_indices

    example = _example(data).to(next(model.parameters()).device)
    out: dict[str, Any] = {"costs": model_costs(model, example).to_dict()}
    out["layer_sparsity"] = masks.layer_sparsity()
    if cfg.metrics.file_sizes:
        out["files"] = file_sizes(model)
    if cfg.metrics.latency:
        out["latency_s"] = measure_latency(model, example, repeats=cfg.metrics.latency_repeats)
    pqi = pq_indices(model, masks)
    if pqi is not None:
        out["pq_index"] = pqi
    return out


# ---------------------------------------------------------------------- public entry points
def resolved_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def run_experiment(
    cfg: ExperimentConfig, *, quiet: bool = False, store: ResultsStore | None = None
) -> dict[str, Any]:
    """Run ``cfg`` end to end (or resume it); return the run's result (also in ``result.json``).

    A finished run is not run again: its stored result is returned. Two processes given the same
    config take turns (the run directory is locked): the second finds the run finished.
    """
    from prunekit.experiments.sources import check_sources
    from prunekit.experiments.trackers import check_tracker

    root = run_dir(cfg)
    if not (root / "result.json").is_file():
        check_tracker(cfg.tracker)  # fails before anything is created when not installed
        check_device(cfg.train.device)
        check_sources(cfg)  # the user's model, data and checkpoint, before anything is created
    with output_root(cfg.output), _locked(root):
        return _run_locked(cfg, quiet, store)


def _run_locked(cfg: ExperimentConfig, quiet: bool, store: ResultsStore | None) -> dict[str, Any]:
    from prunekit.experiments.trackers import make_tracker

    root = run_dir(cfg)
    chash = config_hash(cfg)
    done = root / "result.json"
    store = store if store is not None else ResultsStore(cfg.output)
    log = RunLog(root / "log.txt", quiet=quiet)
    if done.is_file():
        result = read_json(done)
        found = result.get("config_hash") if isinstance(result, dict) else None
        if found != chash:
            raise StaleFileError(done, str(found), chash)
        if not quiet:
            print(f"already finished: {root}")
        store.record(root.name, chash, to_dict(cfg), "done", _summary(result), str(root), cfg.label)
        return result
    tracker = make_tracker(cfg.tracker, cfg, root)  # fails early when not installed
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    make_dirs(root)
    write_text_atomic(resolved_yaml(cfg), root / "config.yaml")
    store.record(root.name, chash, to_dict(cfg), "running", None, str(root), cfg.label)
    start = time.perf_counter()
    try:
        log(f"run {root} (config hash {chash[:10]})")
        data = build_data(cfg)
        model = build_model(cfg, data)
        record_model(root, model, model_spec(cfg, data))
        ctx = _Context(cfg, data, log, _original_schedule(cfg, data, _dense_schedule_name(cfg)))
        if cfg.prune.schedule not in (*TRAINING_SCHEDULES, *RECIPE_SCHEDULES):
            _phases(ctx)  # schedule errors surface before any training
        recipe_extra: dict[str, Any] = {}
        if cfg.data_prune.enabled:
            from prunekit.experiments.data_prune_stage import data_prune_stage

            dense, masks, phases, recipe_extra = data_prune_stage(ctx, model, root)
            dense_iterations = dense["iterations"]
        elif cfg.prune.schedule == "sfw":
            dense = {"metrics": {}, "iterations": 0}
            with stamps.stamped(chash, "recipe"):
                masks, phases, recipe_extra = _whole_recipe_stage(ctx, model, root)
            dense_iterations = 0
        elif cfg.prune.schedule in RECIPE_SCHEDULES:
            dense = _dense_stage(ctx, model)
            dense_iterations = dense["iterations"]
            with stamps.stamped(chash, "recipe"):
                masks, phases, recipe_extra = _whole_recipe_stage(ctx, model, root)
        elif cfg.prune.schedule == "gmp":
            dense: dict[str, Any] = {"metrics": {}, "iterations": 0}
            with stamps.stamped(chash, "phase_1"):
                masks, phases = _gmp_stage(ctx, model, root)
            dense_iterations = ctx.original.total
        elif cfg.prune.schedule in TRAINING_SCHEDULES:
            dense = {"metrics": {}, "iterations": 0}
            with stamps.stamped(chash, "phase_1"):
                masks, phases = _recipe_stage(ctx, model, root)
            dense_iterations = 0
        else:
            dense = _dense_stage(ctx, model)
            dense_iterations = dense["iterations"]
            masks, phases = _prune_retrain_stages(ctx, model, root)
        masks.finalize(model)
        final_dir = root / "final"
        make_dirs(final_dir)
        from prunekit.export import save_compressed

        save_compressed({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        final_dir / "model.compressed.safetensors")  # fmt: skip
        masks.save(final_dir / "masks.safetensors")
        record_reference(final_dir, model, data)
        extra = final_metrics(cfg, model, data, masks)
        result = {
            "name": cfg.name,
            "dataset": cfg.data.name,
            "model": cfg.model.name,
            "method": cfg.label,
            "config_hash": chash,
            "seed": cfg.seed,
            "schedule": cfg.prune.schedule,
            "target_sparsity": cfg.prune.sparsity,
            "sparsity": masks.sparsity,
            "dense": dense["metrics"],
            "final": phases[-1]["retrained"],
            "phases": phases,
            "iterations": {
                "dense": dense_iterations,
                "retrain": sum(p["retrain_iterations"] for p in phases),
            },
            **extra,
            "run_dir": str(root),
            "dense_dir": (
                None if cfg.prune.schedule in TRAINING_SCHEDULES else str(dense_dir(cfg))
            ),
            "wall_s": time.perf_counter() - start,
        }
        result.update(recipe_extra)
        write_json(result, final_dir / "metrics.json")
        write_json(result, done)
        log(f"finished: {_fmt(result['final'])}, sparsity {masks.sparsity:.4f}; outputs in {root}")
    except BaseException:
        store.record(root.name, chash, to_dict(cfg), "failed", None, str(root), cfg.label)
        raise
    store.record(root.name, chash, to_dict(cfg), "done", _summary(result), str(root), cfg.label)
    if cfg.tracker != "none":
        from prunekit.experiments.plots import plot_layer_sparsity

        plot_layer_sparsity([result], root)  # the per-layer plot goes to the tracker too
    tracker.log_run(cfg, result, root)
    tracker.close()
    return result


def check_device(device: str | None, key: str = "train.device") -> None:
    """Fail before any work when ``device`` names an accelerator this machine does not have.

    Raises:
        DeviceError: e.g. ``cuda`` without a CUDA device (names ``key``).
    """
    if device is None or device == "auto":  # auto picks what the machine has
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"{key}: {device!r} is not a device name ({err})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"{key}: {device!r} requested, but CUDA is not available on this machine; "
                f"use {key}=cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"{key}: {device!r} requested, but this machine has {count} GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{key}: 'mps' requested, but MPS is not available; use {key}=cpu")


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The flat metrics stored in the results database."""
    costs = result.get("costs", {})
    out = {
        "method": result.get("method"),
        "seed": result.get("seed"),
        "target_sparsity": result.get("target_sparsity"),
        "sparsity": result.get("sparsity"),
        **{f"final_{k}": v for k, v in result.get("final", {}).items()},
        **{f"dense_{k}": v for k, v in result.get("dense", {}).items()},
    }
    for key in ("params", "nonzeros", "dense_macs", "nonzero_macs", "speedup", "compression"):
        if key in costs:
            out[key] = costs[key]
    return out


def dry_run(
    cfg: ExperimentConfig, out: Callable[[str], None] = print
) -> dict[str, tuple[int, int]]:
    """Print the resolved config and the per-layer pruning plan at the final sparsity; no training."""
    from prunekit.core.report import format_table
    from prunekit.criteria import create_criterion
    from prunekit.experiments.sources import check_sources

    check_sources(cfg)
    out("# resolved config")
    out(resolved_yaml(cfg).rstrip())
    out(f"# run directory: {run_dir(cfg)}")
    out(f"# config hash: {config_hash(cfg)}")
    if cfg.data_prune.enabled:
        dp = cfg.data_prune
        out(f"# data pruning: score {dp.score}, keep {dp.keep} {dp.fraction:g} of the training "
            "set; no weights are pruned")  # fmt: skip
        return {}
    data = build_data(cfg)
    model = build_model(cfg, data)
    # Plan on the dense model when it exists already (the plan at initialisation can differ).
    where = "at initialisation"
    trained = dense_dir(cfg) / "model.safetensors"
    if cfg.dense_checkpoint is not None:
        load_dense_checkpoint(model, cfg.dense_checkpoint)
        where = f"on {cfg.dense_checkpoint}"
    elif cfg.prune.schedule not in TRAINING_SCHEDULES and trained.is_file():
        _load_state(model, trained)
        where = f"on the trained dense model {trained}"
    p = cfg.prune
    needs_data = create_criterion(p.criterion, **p.criterion_options).requires_data
    plan = pruning_plan(
        model,
        p.sparsity,
        p.criterion,
        p.allocation,
        targets=p.targets.build(),
        min_keep=p.min_keep,
        data=_calibration(cfg, data) if needs_data else None,
        seed=cfg.seed,
        criterion_options=p.criterion_options or None,
    )
    rows = [[name, str(n), str(k), f"{k / n:.4f}" if n else "0"] for name, (n, k) in plan.items()]
    total = sum(n for n, _ in plan.values())
    pruned = sum(k for _, k in plan.values())
    rows.append(["total", str(total), str(pruned), f"{pruned / max(total, 1):.4f}"])
    out(f"# pruning plan ({p.criterion}, {p.allocation}, sparsity {p.sparsity}; "
        f"schedule {p.schedule}; {where})")  # fmt: skip
    out(format_table(["layer", "params", "pruned", "sparsity"], rows))
    if where == "at initialisation" and p.schedule != "at_init":
        out("# warning: the model is not trained yet, so this plan is computed from its initial "
            "weights; the plan on the trained model will differ (train first with "
            "'prunekit run', or give dense_checkpoint)")  # fmt: skip
    if ignores_sparsity(cfg):
        out(f"# note: schedule {p.schedule} does not prune to prune.sparsity "
            "(sap: the PQ Index sets each round; sfw: options.levels)")  # fmt: skip
    sys.stdout.flush()
    return plan
