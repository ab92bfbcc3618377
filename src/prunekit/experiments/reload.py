"""Reload a finished run: the final sparse model, its masks and its metrics.

>>> run = prunekit.load_run("results/runs/one_shot_mlp-0123456789")  # doctest: +SKIP
>>> run.model(x); run.masks.sparsity; run.metrics["final"]["test_top1"]  # doctest: +SKIP

The architecture comes from the run's ``model_spec.json`` (the fully resolved model, data-dependent
sizes included), never from the YAML config. A run folder is data: a model built by the user's
``module:function`` factory is rebuilt only when the caller passes ``factory=`` (the function) or
``allow_import=["mypkg"]``; registry models and transformers classes (by name,
``trust_remote_code=False``) need neither.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.masks import MaskSet

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A finished run read back from its directory.

    Attributes:
        model: the final model (final weights, pruned entries exactly zero), in eval mode.
        masks: the final keep-masks.
        metrics: the run's ``result.json`` (final / dense metrics, costs, phases, ...).
        spec: the resolved model spec (``model_spec.json``).
        config: the run's resolved config as plain data (never imported from).
        run_dir: the run directory.
        reference: ``(input, output)`` the runner recorded for the final model, or None.
        reference_device: the device that output was computed on (``"cpu"``, ``"cuda:0"``).
    """

    model: nn.Module
    masks: MaskSet
    metrics: dict[str, Any]
    spec: dict[str, Any]
    config: dict[str, Any]
    run_dir: Path
    reference: tuple[torch.Tensor, torch.Tensor] | None = None
    reference_device: str = "cpu"

    def __iter__(self) -> Iterator[Any]:
        """``model, masks, metrics = prunekit.load_run(run_dir)``."""
        return iter((self.model, self.masks, self.metrics))

    def example_input(self) -> torch.Tensor:
        """One input example the run recorded (for tracing / ONNX export)."""
        if self.reference is None:
            raise ValueError(f"run_dir: {str(self.run_dir)!r} holds no final/reference.safetensors")
        return self.reference[0]

    def matches_reference(self) -> bool:
        """True when the reloaded model's output equals the recorded one bit for bit.

        The model runs on the device the run recorded the output on (kernels differ between
        devices) when that device is present here, else where it is; it is moved back after.
        """
        x, expected = self.reference if self.reference is not None else (None, None)
        if x is None:
            raise ValueError(f"run_dir: {str(self.run_dir)!r} holds no final/reference.safetensors")
        home = next(self.model.parameters()).device
        recorded = torch.device(self.reference_device)
        usable = recorded.type != "cuda" or torch.cuda.is_available()
        try:
            out = self._output_on(recorded if usable else home, x)
        except (RuntimeError, NotImplementedError):
            out = self._output_on(home, x)  # that device type is not usable here
        finally:
            self.model.to(home)
        return bool(torch.equal(out.cpu(), expected))

    def _output_on(self, device: torch.device, x: torch.Tensor) -> torch.Tensor:
        self.model.to(device)
        with torch.no_grad():
            return self.model(x.to(device))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"run_dir: cannot read {str(path)!r}: {err}") from None


def load_run(
    run_dir: str | os.PathLike[str],
    *,
    allow_import: Sequence[str] | None = None,
    factory: Callable[..., nn.Module] | None = None,
    device: str | torch.device = "cpu",
) -> LoadedRun:
    """Reload the final model, masks and metrics of the finished run in ``run_dir``.

    Args:
        run_dir: ``<output>/runs/<name>-<hash>`` (it holds ``result.json``).
        allow_import: top-level packages whose ``module:function`` factory may be imported
            (e.g. ``["mypkg"]``) for a run built by a ``model.factory``; nothing otherwise.
        factory: the model factory itself (called with the recorded kwargs) instead.
        device: where the model and masks go.
    """
    from prunekit.core.serialization import load_safetensors
    from prunekit.experiments.sources import build_from_spec
    from prunekit.experiments.yamlio import YAMLError, load_yaml
    from prunekit.export import load_compressed

    root = Path(run_dir)
    if not (root / "result.json").is_file():
        raise FileNotFoundError(f"run_dir: {str(root)!r} is not a finished run (no result.json)")
    if not (root / "model_spec.json").is_file():
        raise FileNotFoundError(
            f"run_dir: {str(root)!r} has no model_spec.json (written by prunekit runs since "
            "load_run exists); run the config again to record it"
        )
    metrics = _read_json(root / "result.json")
    spec = _read_json(root / "model_spec.json")
    if not isinstance(spec, dict):
        raise ValueError(f"run_dir: {str(root / 'model_spec.json')!r} is not a mapping")
    config: dict[str, Any] = {}
    if (root / "config.yaml").is_file():
        try:
            config = load_yaml((root / "config.yaml").read_text(), str(root / "config.yaml"))
        except (YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"run_dir: {err}") from None
    # Building initialises weights that are replaced next: keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        model = build_from_spec(spec, allow_import=list(allow_import or ()), factory=factory,
                                search_path=os.getcwd())  # fmt: skip
    weights = root / "final" / "model.compressed.safetensors"
    try:
        state = load_compressed(weights)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"run_dir: cannot read {str(weights)!r}: {err}") from None
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) + [
        k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if bad:
        raise ValueError(
            f"run_dir: {str(weights)!r} does not fit the model of model_spec.json (e.g. {bad[0]!r})"
        )
    model.load_state_dict(state)
    model.to(device).eval()
    masks = MaskSet.load(root / "final" / "masks.safetensors", device=device)
    try:
        masks.validate(model)
    except ValueError as err:
        raise ValueError(f"run_dir: {str(root / 'final' / 'masks.safetensors')!r}: {err}") from None
    reference, reference_device = None, "cpu"
    ref_path = root / "final" / "reference.safetensors"
    if ref_path.is_file():
        tensors, meta = load_safetensors(ref_path)
        if not {"input", "output"} <= set(tensors):
            raise ValueError(f"run_dir: {str(ref_path)!r} lacks the input or output tensor")
        reference = (tensors["input"], tensors["output"])
        reference_device = str(meta.get("device", "cpu"))
        try:
            torch.device(reference_device)
        except (RuntimeError, TypeError):
            raise ValueError(f"run_dir: {str(ref_path)!r} names no device") from None
    return LoadedRun(model, masks, metrics, spec, config or {}, root, reference, reference_device)
