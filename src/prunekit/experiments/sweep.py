"""Grids of runs: sparsities x methods x seeds, dense models shared, arms in worker processes.

The dense model of each seed is trained once (first, in parallel over seeds) and every arm that
shares its model, data and training settings prunes a copy of it. Arms run in ``spawn`` worker
processes; each is an ordinary resumable run, so an interrupted sweep resumes arm by arm, and each
is recorded in the results database at the output root.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from prunekit.experiments.config import (
    ExperimentConfig,
    ignores_sparsity,
    resolve,
    runtime_of,
    trains_dense,
)
from prunekit.experiments.data_prune_config import data_prune_axes
from prunekit.experiments.orphans import exit_with_parent
from prunekit.experiments.store import ResultsStore
from prunekit.experiments.typed import ConfigError, to_dict

__all__ = ["Arm", "SweepOutcome", "expand", "run_sweep"]


@dataclass
class Arm:
    """One run of the grid."""

    method: str
    sparsity: float
    seed: int
    config: ExperimentConfig
    fraction: float | None = None  # kept fraction of a data-pruning arm


@dataclass
class SweepOutcome:
    """What a sweep did: finished results and failed arms (label -> error message)."""

    results: list[dict[str, Any]]
    failed: dict[str, str]
    wall_s: float


def expand(cfg: ExperimentConfig) -> list[Arm]:
    """All arms of ``cfg.sweep`` (every arm's config validated before anything runs)."""
    base = to_dict(cfg)
    sweep = base.pop("sweep")
    sparsities = sweep["sparsities"] or [cfg.prune.sparsity]
    seeds = sweep["seeds"] or [cfg.seed]
    methods = sweep["methods"] or {cfg.label: {}}
    level_key = "prune.sparsity"
    data_axes = data_prune_axes(base, sweep, sweep["methods"])
    if data_axes is not None:  # a data-pruning grid: kept fractions instead of sparsities
        methods, level_key, sparsities = data_axes
        methods = methods or {cfg.label: {}}
    arms = []
    single: set[tuple[str, Any]] = set()
    for seed in seeds:
        for label, overrides in methods.items():
            if not isinstance(overrides, dict):
                raise ConfigError(
                    f"sweep.methods.{label}: expected a mapping of dotted keys to values "
                    f"(e.g. {{prune.allocation: lamp}}), got {overrides!r}"
                )
            for sparsity in sparsities:
                pairs = [(k, v) for k, v in overrides.items()]
                pairs += [(level_key, sparsity), ("seed", seed), ("method", label)]
                try:
                    arm_cfg = resolve(base, pairs, **runtime_of(cfg))
                except ConfigError as err:
                    raise ConfigError(f"sweep.methods.{label}: {err}") from None
                if ignores_sparsity(arm_cfg):
                    # one run per seed: the grid's sparsities would all give the same result
                    if (label, seed) in single:
                        continue
                    single.add((label, seed))
                if data_axes is not None:
                    arms.append(Arm(label, arm_cfg.prune.sparsity, int(seed), arm_cfg, sparsity))
                    continue
                arms.append(Arm(label, float(sparsity), int(seed), arm_cfg))
    return arms


def _threads(cfg: ExperimentConfig, workers: int) -> int:
    if cfg.train.threads is not None:
        return cfg.train.threads
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _dense_task(data: dict[str, Any], threads: int, runtime: dict[str, Any]) -> str:
    import torch

    from prunekit.experiments.runner import dense_dir, train_dense

    torch.set_num_threads(threads)
    cfg = resolve(data, **runtime)
    train_dense(cfg)
    return str(dense_dir(cfg))


def _arm_task(data: dict[str, Any], threads: int, runtime: dict[str, Any]) -> dict[str, Any]:
    import torch

    from prunekit.experiments.runner import run_experiment

    torch.set_num_threads(threads)
    return run_experiment(resolve(data, **runtime), quiet=True)


def _pool(workers: int) -> ProcessPoolExecutor:
    """Spawned workers that exit when this process dies, even by SIGKILL."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )


def run_sweep(
    cfg: ExperimentConfig,
    *,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every arm of ``cfg.sweep`` (finished arms are skipped); return results and failures."""
    from prunekit.experiments.runner import check_device, dense_dir, run_dir
    from prunekit.experiments.trackers import check_tracker

    workers = workers or cfg.sweep.workers
    if workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers}")
    arms = expand(cfg)
    check_tracker(cfg.tracker)
    for arm in arms:  # a missing GPU fails the sweep before any arm starts
        check_device(arm.config.train.device)
    ResultsStore(cfg.output)  # create the database (WAL mode) before the workers write to it
    start = time.perf_counter()
    todo = [a for a in arms if not (run_dir(a.config) / "result.json").is_file()]
    log(
        f"sweep {cfg.name}: {len(arms)} arms ({len(arms) - len(todo)} already finished), "
        f"{workers} worker(s), outputs in {cfg.output}"
    )
    dense: dict[str, ExperimentConfig] = {}
    for arm in todo:
        if trains_dense(arm.config):
            dense.setdefault(str(dense_dir(arm.config)), arm.config)
    threads = _threads(cfg, workers)
    failed: dict[str, str] = {}
    results: list[dict[str, Any]] = []

    def label(arm: Arm) -> str:
        if arm.fraction is not None:
            return f"{arm.method} kept={arm.fraction:g} seed={arm.seed}"
        return f"{arm.method} sparsity={arm.sparsity:g} seed={arm.seed}"

    if workers == 1:
        for directory, dcfg in dense.items():
            log(f"dense model -> {directory}")
            _dense_task(to_dict(dcfg), threads, runtime_of(dcfg))
        for i, arm in enumerate(arms, 1):
            try:
                results.append(_arm_task(to_dict(arm.config), threads, runtime_of(arm.config)))
                log(f"[{i}/{len(arms)}] {label(arm)}: {_acc(results[-1])}")
            except Exception as err:  # one failed arm must not stop the others
                failed[label(arm)] = f"{type(err).__name__}: {err}"
                log(f"[{i}/{len(arms)}] {label(arm)}: FAILED {failed[label(arm)]}")
    else:
        with _pool(workers) as pool:
            futures = {
                pool.submit(_dense_task, to_dict(c), threads, runtime_of(c)): d
                for d, c in dense.items()
            }
            for future in as_completed(futures):
                log(f"dense model -> {future.result()}")
            futures = {
                pool.submit(_arm_task, to_dict(a.config), threads, runtime_of(a.config)): a
                for a in arms
            }
            for i, future in enumerate(as_completed(futures), 1):
                arm = futures[future]
                try:
                    results.append(future.result())
                    log(f"[{i}/{len(arms)}] {label(arm)}: {_acc(results[-1])}")
                except Exception as err:
                    failed[label(arm)] = f"{type(err).__name__}: {err}"
                    log(f"[{i}/{len(arms)}] {label(arm)}: FAILED {failed[label(arm)]}")
    return SweepOutcome(results, failed, time.perf_counter() - start)


def _acc(result: dict[str, Any]) -> str:
    final = result.get("final", {})
    if "test_top1" in final:
        return f"test_top1={final['test_top1']:.4f}"
    return ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k.startswith("test_"))
