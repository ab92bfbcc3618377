"""Experiments: typed configs, a resumable runner, sweeps, a results database and reports."""

from __future__ import annotations

from prunekit.experiments.config import ExperimentConfig, config_hash, load_config, resolve
from prunekit.experiments.report import collect_results, write_report
from prunekit.experiments.runner import dry_run, run_dir, run_experiment
from prunekit.experiments.store import ResultsStore
from prunekit.experiments.sweep import expand, run_sweep
from prunekit.experiments.typed import ConfigError

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "ResultsStore",
    "collect_results",
    "config_hash",
    "dry_run",
    "expand",
    "load_config",
    "resolve",
    "run_dir",
    "run_experiment",
    "run_sweep",
    "write_report",
]
