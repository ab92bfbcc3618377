"""Run one experiment end to end in a resumable run directory.

The runner knows no method: it validates the config, looks its recipe up in the registry
(:mod:`prunekit.recipes`), builds the recipe's stages and hands them to the one executor
(:func:`prunekit.recipes.executor.execute`), which skips every stage whose outputs exist
(OpenLTH style). Inside a stage the Trainer checkpoints every ``train.checkpoint_every``
iterations, so a run killed at any point resumes from its last checkpoint and ends with the
same result. Last, the runner writes the final model, its costs and ``result.json``::

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

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from prunekit.core.errors import DeviceError, StaleFileError
from prunekit.core.masks import MaskSet
from prunekit.core.prune import pruning_plan
from prunekit.core.serialization import (
    check_state_fits,
    make_dirs,
    output_root,
    read_json,
    save_safetensors,
    write_json,
    write_text_atomic,
)
from prunekit.data import create_dataset
from prunekit.data.base import DatasetBundle
from prunekit.experiments.config import (
    ExperimentConfig,
    config_hash,
    dense_hash,
)
from prunekit.experiments.store import ResultsStore
from prunekit.experiments.typed import ConfigError, to_dict
from prunekit.recipes.context import RunContext
from prunekit.recipes.dense import dense_stage
from prunekit.recipes.executor import execute
from prunekit.recipes.files import RunLog, load_state_file, locked, read_state_dict
from prunekit.recipes.registry import Recipe, recipe_for
from prunekit.recipes.spec import PruneSpec, TrainSpec

__all__ = [
    "RunLog",
    "build_data",
    "build_model",
    "dense_dir",
    "dry_run",
    "read_state_dict",
    "recipe_of",
    "run_context",
    "run_dir",
    "run_experiment",
    "train_dense",
]


# ---------------------------------------------------------------------- paths
def recipe_of(cfg: ExperimentConfig) -> Recipe:
    """The registered recipe ``cfg`` runs (``data_prune`` when data pruning is enabled)."""
    return recipe_for(cfg)


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
    # A recipe may train its dense model with its own LR schedule (budgeted IMP: linear decay).
    return recipe_of(cfg).dense_lr_schedule or cfg.train.lr_schedule


def dense_dir(cfg: ExperimentConfig) -> Path:
    """``<output>/dense/<dense hash>``: shared by runs with the same model, data, train, seed."""
    return Path(cfg.output) / "dense" / dense_hash(cfg, _dense_schedule_name(cfg))[:12]


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


def build_model(cfg: ExperimentConfig, data: DatasetBundle, seed: int | None = None) -> nn.Module:
    """The model of ``cfg.model``, initialised under ``torch.manual_seed(seed)`` (default:
    ``cfg.seed``)."""
    from prunekit.experiments.sources import build_from_spec

    spec = model_spec(cfg, data)
    torch.manual_seed(cfg.seed if seed is None else seed)
    return build_from_spec(spec, allow_import=cfg.allow_import, search_path=cfg.source_dir)


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in ("test_top1", "test_loss", "test_perplexity") if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def _example(data: DatasetBundle) -> torch.Tensor:
    return data.test.x[:1]


# ---------------------------------------------------------------------- config -> recipe context
def train_spec(cfg: ExperimentConfig, lr_schedule: str | None = None) -> TrainSpec:
    """The ``train`` section (and seed) as the recipes' :class:`TrainSpec`."""
    t = cfg.train
    return TrainSpec(
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        lr_schedule=lr_schedule or t.lr_schedule,
        optimizer=t.optimizer,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
        seed=cfg.seed,
        device=t.device,
        progress=t.progress,
        checkpoint_every=t.checkpoint_every,
    )


def prune_spec(cfg: ExperimentConfig) -> PruneSpec:
    """The ``prune`` section (and the calibration batches) as the recipes' :class:`PruneSpec`."""
    p = cfg.prune
    assert p.sparsity is not None  # set when the config was validated
    return PruneSpec(
        sparsity=p.sparsity,
        method=p.criterion,
        allocation=p.allocation,
        targets=p.targets.build(),
        min_keep=p.min_keep,
        criterion_options=p.criterion_options or None,
        calibration_batches=cfg.data.calibration_batches,
        calibration_batch_size=cfg.data.calibration_batch_size,
    )


def run_context(
    cfg: ExperimentConfig,
    model: nn.Module,
    data: DatasetBundle,
    log: Callable[[str], None],
    root: Path | None,
) -> RunContext:
    """The recipe context of ``cfg``: the same inputs the Python API would be given."""
    recipe = recipe_of(cfg)
    loader = None
    if cfg.dense_checkpoint is not None:
        path = cfg.dense_checkpoint

        def loader(m: nn.Module) -> str:
            load_dense_checkpoint(m, path)
            return str(path)

    def factory(seed: int) -> nn.Module:
        return build_model(cfg, data, seed)

    return RunContext(
        model,
        data,
        train_spec(cfg, recipe.dense_lr_schedule),
        prune_spec(cfg),
        retrain_epochs=cfg.retrain.epochs,
        retrain_schedule=cfg.retrain.schedule,
        options=recipe.configure(cfg),
        dense_checkpoint=loader,
        model_factory=factory,
        log=log,
        run_dir=root,
        dense_dir=dense_dir(cfg),
        run_key=config_hash(cfg),
        dense_key=dense_hash(cfg, _dense_schedule_name(cfg)),
    )


def _stages(recipe: Recipe, ctx: RunContext) -> list:
    try:
        return recipe.stages(ctx)  # option errors surface before any training
    except ValueError as err:
        raise ConfigError(_config_key(recipe, str(err))) from None


def _config_key(recipe: Recipe, message: str) -> str:
    """A recipe's option error with the config key in front: ``prune.options.<key>`` for the
    recipe's own options, ``prune.<key>`` for the section's keys; full keys stay."""
    key = message.split(":", 1)[0].strip()
    if key.startswith(("prune.", "data_prune.", "train.", "retrain.")):
        return message
    if key.split(".")[0] in recipe.option_names():
        return f"prune.options.{message}"
    return f"prune.{message}"


def train_dense(cfg: ExperimentConfig, *, quiet: bool = True) -> dict[str, Any]:
    """Train (or reuse) the dense model of ``cfg`` in its shared dense directory."""
    check_device(cfg.train.device)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    data = build_data(cfg)
    model = build_model(cfg, data)
    log = RunLog(dense_dir(cfg) / "log.txt", quiet=quiet)
    with output_root(cfg.output):
        make_dirs(dense_dir(cfg))
        ctx = run_context(cfg, model, data, log, run_dir(cfg))
        execute([dense_stage()], ctx)
    return ctx.dense


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
    with output_root(cfg.output), locked(root):
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
        recipe = recipe_of(cfg)
        ctx = run_context(cfg, model, data, log, root)
        execute(_stages(recipe, ctx), ctx)
        masks = ctx.masks if ctx.masks is not None else MaskSet()
        phases = ctx.phases
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
            "dense": ctx.dense["metrics"],
            "final": phases[-1]["retrained"],
            "phases": phases,
            "iterations": {
                "dense": ctx.dense_iterations,
                "retrain": sum(p["retrain_iterations"] for p in phases),
            },
            **extra,
            "run_dir": str(root),
            "dense_dir": str(dense_dir(cfg)) if recipe.trains_dense else None,
            "wall_s": time.perf_counter() - start,
        }
        result.update(ctx.extra)
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
    recipe = recipe_of(cfg)
    if not recipe.prunes_weights:
        out(f"# {recipe.name}: {recipe.doc} No weights are pruned.")
        return {}
    data = build_data(cfg)
    model = build_model(cfg, data)
    # Plan on the dense model when it exists already (the plan at initialisation can differ).
    where = "at initialisation"
    trained = dense_dir(cfg) / "model.safetensors"
    if cfg.dense_checkpoint is not None:
        load_dense_checkpoint(model, cfg.dense_checkpoint)
        where = f"on {cfg.dense_checkpoint}"
    elif recipe.trains_dense and trained.is_file():
        load_state_file(model, trained)
        where = f"on the trained dense model {trained}"
    p = cfg.prune
    needs_data = create_criterion(p.criterion, **p.criterion_options).requires_data
    calibration = run_context(cfg, model, data, out, None).calibration
    plan = pruning_plan(
        model,
        p.sparsity,
        p.criterion,
        p.allocation,
        targets=p.targets.build(),
        min_keep=p.min_keep,
        data=calibration() if needs_data else None,
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
    if where == "at initialisation" and recipe.trains_dense:
        out("# warning: the model is not trained yet, so this plan is computed from its initial "
            "weights; the plan on the trained model will differ (train first with "
            "'prunekit run', or give dense_checkpoint)")  # fmt: skip
    if recipe.ignores_sparsity(p.options):
        out(f"# note: schedule {p.schedule} picks its own sparsity levels; prune.sparsity "
            "does not change the run")  # fmt: skip
    sys.stdout.flush()
    return plan
