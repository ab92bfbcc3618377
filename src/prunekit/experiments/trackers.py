"""Optional experiment trackers (MLflow, Weights & Biases), offline-friendly, never required.

``tracker: mlflow`` logs to a local file store ``<output>/mlruns`` unless ``MLFLOW_TRACKING_URI``
is set; ``tracker: wandb`` runs in offline mode unless ``WANDB_MODE`` is set. Asking for a tracker
that is not installed is an error raised before any work starts.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from prunekit.experiments.typed import ConfigError

__all__ = ["NullTracker", "Tracker", "flatten", "make_tracker"]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists become strings)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = (
        data if isinstance(data, (int, float, str, bool)) or data is None else str(data)
    )
    return out


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class Tracker:
    """Logs a finished run: parameters (the flat config), final metrics and the plots / files."""

    def log_run(self, cfg: Any, result: dict[str, Any], run_dir: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - nothing to close by default
        pass


class NullTracker(Tracker):
    """No tracking (the default)."""

    def log_run(self, cfg: Any, result: dict[str, Any], run_dir: Path) -> None:
        pass


def _run_metrics(result: dict[str, Any]) -> dict[str, float]:
    flat = {
        **{f"final.{k}": v for k, v in result.get("final", {}).items()},
        **{f"dense.{k}": v for k, v in result.get("dense", {}).items()},
        "sparsity": result.get("sparsity"),
    }
    costs = result.get("costs", {})
    for key in ("params", "nonzeros", "dense_macs", "nonzero_macs", "speedup", "compression"):
        if key in costs:
            flat[key] = costs[key]
    return _numeric(flat)


def _artifacts(run_dir: Path) -> list[Path]:
    files = [run_dir / "result.json", run_dir / "config.yaml"]
    files += sorted(run_dir.glob("*.png"))
    return [f for f in files if f.is_file()]


class MLflowTracker(Tracker):
    def __init__(self, module: Any, cfg: Any, run_dir: Path) -> None:
        self.mlflow = module
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            uri = (Path(cfg.output) / "mlruns").resolve().as_uri()
            module.set_tracking_uri(uri)
        module.set_experiment(cfg.name)
        self.run_name = run_dir.name

    def log_run(self, cfg: Any, result: dict[str, Any], run_dir: Path) -> None:
        from prunekit.experiments.typed import to_dict

        with self.mlflow.start_run(run_name=self.run_name):
            self.mlflow.log_params(
                {k: str(v)[:250] for k, v in flatten(to_dict(cfg)).items() if k != "sweep"}
            )
            self.mlflow.log_metrics(_run_metrics(result))
            for path in _artifacts(run_dir):
                self.mlflow.log_artifact(str(path))


class WandbTracker(Tracker):
    def __init__(self, module: Any, cfg: Any, run_dir: Path) -> None:
        self.wandb = module
        self.project = cfg.name
        self.run_name = run_dir.name

    def log_run(self, cfg: Any, result: dict[str, Any], run_dir: Path) -> None:
        from prunekit.experiments.typed import to_dict

        run = self.wandb.init(
            project=self.project,
            name=self.run_name,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=flatten(to_dict(cfg)),
            reinit=True,
        )
        run.log(_run_metrics(result))
        for path in _artifacts(run_dir):
            if path.suffix == ".png":
                run.log({path.stem: self.wandb.Image(str(path))})
        run.finish()


_TRACKERS = {"mlflow": MLflowTracker, "wandb": WandbTracker}


def make_tracker(name: str, cfg: Any, run_dir: Path) -> Tracker:
    """The tracker named in the config; ``ConfigError`` naming ``tracker`` if it is not installed."""
    if name in (None, "none"):
        return NullTracker()
    if name not in _TRACKERS:
        raise ConfigError(f"tracker: expected one of 'none', 'mlflow', 'wandb', got {name!r}")
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"tracker: {name!r} was asked for but is not installed (pip install {name}); "
            "set tracker: none to run without it"
        ) from None
    return _TRACKERS[name](module, cfg, run_dir)


def check_tracker(name: str) -> None:
    """Raise ``ConfigError`` now if the tracker ``name`` is asked for but not installed."""
    if name in (None, "none"):
        return
    try:
        importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"tracker: {name!r} was asked for but is not installed (pip install {name}); "
            "set tracker: none to run without it"
        ) from None
