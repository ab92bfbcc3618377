"""Sparse Model Soups (Zimmer, Spiegel and Pokutta, ICLR 2024), independent of any training loop.

One phase: prune, retrain m copies with the mask fixed (each varying one of seed, weight decay,
retraining length or LR schedule), average them, recalibrate BatchNorm statistics, and let the
next phase prune the soup. All ingredients share one mask, so every average keeps it: a pruned
weight is 0 in every ingredient, hence 0 in the mean.

The pieces:

* :func:`uniform_soup` and :func:`greedy_soup` merge state dicts;
* :func:`recalibrate_batchnorm` recomputes BatchNorm running statistics of a merged model;
* :func:`prediction_ensemble` is the (m times more expensive) averaged-softmax comparison;
* :func:`check_masks` verifies that a state dict keeps a mask set exactly;
* :func:`ingredient_variants` makes the m retraining configurations;
* :func:`run_soup_phase` runs a user-supplied ``retrain_fn(model, masks, variant) -> state_dict``
  for every variant (in worker processes when ``workers > 1``), saves each finished ingredient
  so that a rerun skips it, builds both soups and reports all accuracies.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core import stamps
from prunekit.core.device import device_of
from prunekit.core.errors import FileFormatError
from prunekit.core.masks import MaskSet
from prunekit.core.serialization import load_safetensors, make_dirs, save_safetensors, write_json

StateDict = Mapping[str, Tensor]
INGREDIENT_FORMAT = "prunekit.soup_ingredient/1"
SOUP_FORMAT = "prunekit.soup/1"


# ---------------------------------------------------------------------- merging
def _check_compatible(state_dicts: Sequence[StateDict], argument: str) -> None:
    if not state_dicts:
        raise ValueError(f"{argument}: expected at least one state dict")
    for i, sd in enumerate(state_dicts):
        if not isinstance(sd, Mapping):
            raise TypeError(f"{argument}[{i}]: expected a state dict, got {type(sd).__name__}")
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], start=1):
        if list(sd) != keys and set(sd) != set(keys):
            missing = sorted(set(keys) ^ set(sd))[:3]
            raise ValueError(f"{argument}[{i}]: keys differ from {argument}[0] (e.g. {missing})")
        for key in keys:
            if sd[key].shape != state_dicts[0][key].shape:
                raise ValueError(
                    f"{argument}[{i}]: {key!r} has shape {tuple(sd[key].shape)}, "
                    f"{argument}[0] has {tuple(state_dicts[0][key].shape)}"
                )


@torch.no_grad()
def uniform_soup(
    state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None
) -> dict[str, Tensor]:
    """The (weighted) mean of state dicts; non-float entries (step counters) come from the first.

    Floating tensors are accumulated in float64 and cast back, so the mean of equal tensors is
    exactly that tensor and the mean of zeros is exactly zero.
    """
    _check_compatible(state_dicts, "state_dicts")
    if weights is None:
        weights = [1.0 / len(state_dicts)] * len(state_dicts)
    elif len(weights) != len(state_dicts) or not math.isclose(sum(weights), 1.0, rel_tol=1e-6):
        raise ValueError("weights: expected one weight per state dict, summing to 1")
    out: dict[str, Tensor] = {}
    for key, first in state_dicts[0].items():
        if not first.is_floating_point():
            out[key] = first.detach().clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for w, sd in zip(weights, state_dicts):
            acc.add_(sd[key].detach().to(acc.device, torch.float64), alpha=float(w))
        out[key] = acc.to(first.dtype)
    return out


@dataclass
class GreedySoupResult:
    """Outcome of :func:`greedy_soup`."""

    state_dict: dict[str, Tensor]
    ingredients: list[int]  # indices into the candidates, in the order they were added
    accuracy: float  # validation accuracy of the soup
    candidate_accuracy: list[float]  # validation accuracy of each candidate alone
    history: list[tuple[int, float, bool]] = field(default_factory=list)  # (index, acc, kept)


def greedy_soup(
    candidates: Sequence[StateDict],
    evaluate_fn: Callable[[dict[str, Tensor]], float],
    *,
    candidate_accuracy: Sequence[float] | None = None,
) -> GreedySoupResult:
    """Greedy soup (Wortsman et al. 2022): start from the best candidate, then try the others in
    decreasing order of validation accuracy, keeping each one whose addition does not lower the
    soup's accuracy.

    Args:
        candidates: state dicts sharing keys and shapes.
        evaluate_fn: validation accuracy of a state dict (recalibrate BatchNorm inside when the
            model has it; :func:`run_soup_phase` does).
        candidate_accuracy: the candidates' own accuracies if already known (else evaluated).

    The result is never worse on validation than its first (best) ingredient: a candidate is
    kept only when the accuracy does not drop.
    """
    _check_compatible(candidates, "candidates")
    if candidate_accuracy is None:
        candidate_accuracy = [float(evaluate_fn(dict(sd))) for sd in candidates]
    elif len(candidate_accuracy) != len(candidates):
        raise ValueError("candidate_accuracy: expected one accuracy per candidate")
    order = sorted(range(len(candidates)), key=lambda i: -candidate_accuracy[i])
    chosen = [order[0]]
    soup = {k: v.detach().clone() for k, v in candidates[order[0]].items()}
    best = float(candidate_accuracy[order[0]])
    history: list[tuple[int, float, bool]] = [(order[0], best, True)]
    for i in order[1:]:
        trial = uniform_soup([candidates[j] for j in [*chosen, i]])
        acc = float(evaluate_fn(trial))
        kept = acc >= best
        history.append((i, acc, kept))
        if kept:
            chosen.append(i)
            soup, best = trial, acc
    return GreedySoupResult(soup, chosen, best, [float(a) for a in candidate_accuracy], history)


# ---------------------------------------------------------------------- masks
def check_masks(state_dict: StateDict, masks: MaskSet, *, name: str = "state_dict") -> None:
    """Raise a ValueError unless every pruned entry of ``masks`` is exactly 0 in ``state_dict``."""
    for key, mask in masks.items():
        if key not in state_dict:
            raise ValueError(f"{name}: the masked parameter {key!r} is missing")
        value = state_dict[key]
        if value.shape != mask.shape:
            raise ValueError(
                f"{name}: {key!r} has shape {tuple(value.shape)}, its mask {tuple(mask.shape)}"
            )
        broken = int((value.detach()[~mask.to(value.device)] != 0).sum())
        if broken:
            raise ValueError(
                f"{name}: {broken} pruned entries of {key!r} are non-zero; the retraining must "
                "keep the masks (masks.attach(optimizer, model))"
            )


def state_dict_sparsity(state_dict: StateDict, masks: MaskSet) -> float:
    """Fraction of zeros over the masked tensors of ``state_dict`` (compare with masks.sparsity)."""
    total = sum(state_dict[k].numel() for k in masks)
    zeros = sum(int((state_dict[k] == 0).sum()) for k in masks)
    return zeros / total if total else 0.0


# ---------------------------------------------------------------------- BatchNorm and evaluation
def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _to(x: Any, device: torch.device | str | None) -> Any:
    return x.to(device) if device is not None and isinstance(x, Tensor) else x


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    data: Iterable[Any],
    *,
    num_batches: int | None = None,
    fraction: float | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Recompute the running mean and variance of every BatchNorm layer from ``data``.

    Resets the statistics, forwards the batches in train mode with ``momentum=None`` (an exact
    cumulative average over the batches), then restores every module's mode and momentum. Only
    the BatchNorm running statistics (and their batch counters) change. ``data`` yields input
    tensors or tuples whose first item is the input. Use ``num_batches`` or ``fraction`` (of
    ``len(data)``; the paper forwards 20% of the training set) to stop early.

    ``device`` defaults to the model's: batches on the CPU are moved there one at a time.

    Returns the number of batches forwarded (0 and nothing done when there is no BatchNorm).
    """
    device = device if device is not None else device_of(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    if num_batches is not None and fraction is not None:
        raise ValueError("num_batches / fraction: give at most one of them")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
        if not hasattr(data, "__len__"):
            raise TypeError("data: fraction= needs data with a len(); pass num_batches= instead")
        num_batches = max(1, math.ceil(fraction * len(data)))  # type: ignore[arg-type]
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches: expected a positive int, got {num_batches!r}")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        if not m.track_running_stats:
            continue
        m.reset_running_stats()
        m.momentum = None
    seen = 0
    try:
        model.train()
        for batch in data:
            if num_batches is not None and seen >= num_batches:
                break
            model(_to(_inputs(batch), device))
            seen += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
    if seen == 0:
        raise ValueError("data: no batches to recalibrate BatchNorm with")
    return seen


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, data: Iterable[Any], device: torch.device | str | None = None
) -> float:
    """Top-1 accuracy of ``model`` in eval mode over ``(inputs, labels)`` batches.

    ``device`` defaults to the model's; each batch is moved there."""
    device = device if device is not None else device_of(model)
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y, *_ in data:
            pred = model(_to(x, device)).argmax(-1).cpu()
            correct += int((pred == y.cpu()).sum())
            total += int(y.numel())
    finally:
        model.train(was)
    if total == 0:
        raise ValueError("data: no labelled examples")
    return correct / total


@torch.no_grad()
def prediction_ensemble(
    models: Sequence[nn.Module], data: Iterable[Any], device: torch.device | str | None = None
) -> float:
    """Accuracy of the averaged softmax of ``models`` (eval mode) over ``(inputs, labels)``."""
    if not models:
        raise ValueError("models: expected at least one model")
    device = device if device is not None else device_of(models[0])
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    correct = total = 0
    try:
        for x, y, *_ in data:
            x = _to(x, device)
            probs = sum(torch.softmax(m(x).float(), dim=-1) for m in models) / len(models)
            correct += int((probs.argmax(-1).cpu() == y.cpu()).sum())
            total += int(y.numel())
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if total == 0:
        raise ValueError("data: no labelled examples")
    return correct / total


# ---------------------------------------------------------------------- variants
_VARY_KEYS = {
    "seed": "seed",
    "weight_decay": "weight_decay",
    "length": "epochs",
    "lr_schedule": "lr_schedule",
}
DEFAULT_SCHEDULES = ("llr", "clr", "slr", "ft")


def ingredient_variants(
    base_config: Mapping[str, Any],
    vary: str = "seed",
    m: int = 3,
    *,
    values: Sequence[Any] | None = None,
    key: str | None = None,
) -> list[dict[str, Any]]:
    """m copies of ``base_config`` that differ in one setting, each tagged with ``ingredient``.

    Defaults (``values`` overrides them, ``key`` renames the config key):

    * ``"seed"`` (key ``seed``): base seed (default 0) + 0, 1, ..., m-1 (batch order, augmentation);
    * ``"weight_decay"`` (key ``weight_decay``): the base value times ``2^t``, t evenly spaced in
      [-1, 1] (m = 3: half, same, double);
    * ``"length"`` (key ``epochs``): the base length times factors evenly spaced in [0.75, 1.25],
      rounded, at least 1;
    * ``"lr_schedule"`` (key ``lr_schedule``): cycles through ``llr, clr, slr, ft`` (the
      retraining schedules of Zimmer et al. 2023: linear, cosine, stretched, fine-tune).
    """
    if vary not in _VARY_KEYS:
        raise ValueError(f"vary: expected one of {', '.join(_VARY_KEYS)}, got {vary!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m: expected a positive int, got {m!r}")
    if not isinstance(base_config, Mapping):
        raise TypeError(f"base_config: expected a mapping, got {type(base_config).__name__}")
    key = key or _VARY_KEYS[vary]
    if values is not None:
        values = list(values)
        if len(values) != m:
            raise ValueError(f"values: expected {m} values (one per ingredient), got {len(values)}")
    elif vary == "seed":
        base = int(base_config.get(key, 0))
        values = [base + i for i in range(m)]
    elif vary in ("weight_decay", "length"):
        if key not in base_config:
            raise ValueError(
                f"base_config: varying {vary} needs a base value under {key!r} (or pass values=)"
            )
        base = float(base_config[key])
        if vary == "weight_decay":
            if base <= 0:
                raise ValueError(f"base_config[{key!r}]: needs a positive base value, got {base}")
            exps = [0.0] if m == 1 else [-1.0 + 2.0 * i / (m - 1) for i in range(m)]
            values = [base * 2.0**e for e in exps]
        else:
            facs = [1.0] if m == 1 else [0.75 + 0.5 * i / (m - 1) for i in range(m)]
            values = [max(1, int(round(base * f))) for f in facs]
    else:
        values = [DEFAULT_SCHEDULES[i % len(DEFAULT_SCHEDULES)] for i in range(m)]
    out = []
    for i, value in enumerate(values):
        config = copy.deepcopy(dict(base_config))
        config[key] = value
        config["ingredient"] = i
        config["vary"] = vary
        out.append(config)
    return out


# ---------------------------------------------------------------------- the phase
@dataclass
class SoupPhaseResult:
    """Accuracies and merged weights of one soup phase."""

    ingredient_accuracy: list[float]
    uniform_accuracy: float
    greedy_accuracy: float
    greedy_ingredients: list[int]
    ensemble_accuracy: float
    mask_sparsity: float
    soup_sparsity: dict[str, float]
    uniform_state_dict: dict[str, Tensor]
    greedy_state_dict: dict[str, Tensor]
    resumed: list[int] = field(default_factory=list)
    selected: str | None = None
    ingredient_state_dicts: list[dict[str, Tensor]] = field(default_factory=list, repr=False)

    @property
    def best_ingredient_accuracy(self) -> float:
        return max(self.ingredient_accuracy)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no tensors)."""
        return {
            "ingredient_accuracy": self.ingredient_accuracy,
            "best_ingredient_accuracy": self.best_ingredient_accuracy,
            "uniform_accuracy": self.uniform_accuracy,
            "greedy_accuracy": self.greedy_accuracy,
            "greedy_ingredients": self.greedy_ingredients,
            "ensemble_accuracy": self.ensemble_accuracy,
            "mask_sparsity": self.mask_sparsity,
            "soup_sparsity": self.soup_sparsity,
            "resumed": self.resumed,
            "selected": self.selected,
        }


def _variant_digest(variant: Mapping[str, Any]) -> str:
    text = json.dumps(variant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ingredient_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"ingredient_{index:03d}.safetensors"


def _save_ingredient(
    path: Path, state_dict: StateDict, index: int, variant: Mapping[str, Any]
) -> None:
    tensors = {k: v.detach().clone() for k, v in state_dict.items()}
    meta = {
        "format": INGREDIENT_FORMAT,
        "index": index,
        "variant": json.loads(json.dumps(variant, default=str)),
        "digest": _variant_digest(variant),
    }
    stamp = stamps.active()
    if stamp is not None:
        meta[stamps.STAMP_KEY] = stamp.to_json()
    save_safetensors(tensors, path, meta)


def _load_ingredient(path: Path, variant: Mapping[str, Any]) -> dict[str, Tensor]:
    tensors, meta = load_safetensors(path)
    if meta.get("format") != INGREDIENT_FORMAT:
        raise FileFormatError(path, "not a soup ingredient file (out_dir)")
    if meta.get("digest") != _variant_digest(variant):
        raise FileFormatError(
            path,
            f"trained with variant {meta.get('variant')}, not "
            f"{json.loads(json.dumps(variant, default=str))}; use a fresh out_dir",
        )
    if stamps.STAMP_KEY in meta:  # parallel workers write without the parent's stage stamp
        stamps.check(meta[stamps.STAMP_KEY], path)
    return tensors


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _retrain_job(
    retrain_fn: Callable[..., StateDict],
    model: nn.Module,
    masks: MaskSet,
    variant: dict[str, Any],
    index: int,
    path: str,
) -> str:
    state_dict = retrain_fn(model, masks, variant)
    _save_ingredient(Path(path), state_dict, index, variant)
    return path


def run_soup_phase(
    model: nn.Module,
    masks: MaskSet,
    retrain_fn: Callable[[nn.Module, MaskSet, dict[str, Any]], StateDict],
    variants: Sequence[Mapping[str, Any]],
    val_data: Iterable[Any],
    *,
    workers: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    bn_data: Iterable[Any] | None = None,
    bn_batches: int | None = None,
    select: str | None = "greedy",
    device: torch.device | str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    wait_s: float = 0.0,
) -> SoupPhaseResult:
    """Retrain one ingredient per variant, merge them, and report every accuracy.

    Args:
        model: the pruned model (its weights are the starting point of every ingredient).
        masks: the phase's mask set; every ingredient must keep it (checked).
        retrain_fn: ``retrain_fn(model, masks, variant) -> state_dict``; it receives its own
            copy of ``model`` and of ``masks`` and must enforce the masks while training. With
            ``workers > 1`` it runs in spawned processes, so it must be importable (a module-level
            function) and the model and masks picklable.
        variants: one config per ingredient (see :func:`ingredient_variants`).
        val_data: ``(inputs, labels)`` batches for the per-ingredient, soup and ensemble
            accuracies and for the greedy soup's choices. Iterated many times: use a list or a
            DataLoader, not a generator.
        workers: parallel retraining processes (``torch.multiprocessing`` spawn context).
        out_dir: where each finished ingredient is saved (``ingredient_000.safetensors``, ...,
            with its variant in the metadata) together with both soups and ``soup_phase.json``.
            A rerun loads the ingredients already there and retrains only the missing ones; a
            file from a different variant is an error.
        bn_data: batches for BatchNorm recalibration of every soup (required when the model
            has BatchNorm; e.g. 20% of the training set), limited to ``bn_batches``.
        select: load this soup into ``model`` at the end (``"greedy"``, ``"uniform"``, ``"best"``
            = the better of the two on validation, or None to leave ``model`` unchanged).
        device: where evaluation runs (data are moved there).
        rank, world_size: share the ingredients between the ranks of a job (e.g. ``torchrun``):
            rank r trains the missing ingredients i with ``i % world_size == r`` into the shared
            ``out_dir``, then waits for the others (``torch.distributed.barrier()`` when a process
            group is initialised, else polling the directory for up to ``wait_s`` seconds) and
            builds the same soups as every other rank (only rank 0 writes the soup files).
            By default both come from ``torch.distributed`` when it is initialised (else 0, 1).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(masks, MaskSet):
        raise TypeError(f"masks: expected a MaskSet, got {type(masks).__name__}")
    masks.validate(model)
    variants = [dict(v) for v in variants]
    if not variants:
        raise ValueError("variants: expected at least one ingredient configuration")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive int, got {workers!r}")
    if select not in ("greedy", "uniform", "best", None):
        raise ValueError(f"select: expected 'greedy', 'uniform', 'best' or None, got {select!r}")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and bn_data is None:
        raise ValueError("bn_data: the model has BatchNorm; soups need data to recalibrate it")
    if isinstance(val_data, Iterable) and iter(val_data) is val_data:
        raise TypeError("val_data: expected a re-iterable (list, DataLoader), got an iterator")

    rank, world_size, distributed = _resolve_ranks(rank, world_size)
    if world_size > 1 and out_dir is None:
        raise ValueError("out_dir: sharing ingredients between ranks needs a shared out_dir")
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        make_dirs(out_path)
    ingredients: dict[int, dict[str, Tensor]] = {}
    resumed: list[int] = []
    todo: list[int] = []
    for i, variant in enumerate(variants):
        if out_path is not None and _ingredient_path(out_path, i).is_file():
            ingredients[i] = _load_ingredient(_ingredient_path(out_path, i), variant)
            resumed.append(i)
        else:
            todo.append(i)
    mine = [i for i in todo if i % world_size == rank]
    others = [i for i in todo if i % world_size != rank]
    todo = mine

    if todo and workers == 1:
        for i in todo:
            sd = retrain_fn(copy.deepcopy(model), masks.clone(), dict(variants[i]))
            sd = {k: v.detach().cpu().clone() for k, v in sd.items()}
            if out_path is not None:
                _save_ingredient(_ingredient_path(out_path, i), sd, i, variants[i])
            ingredients[i] = sd
    elif todo:
        _run_parallel(model, masks, retrain_fn, variants, todo, workers, out_path, ingredients)
    if others:
        _wait_for_ranks(out_path, others, distributed, wait_s)  # type: ignore[arg-type]
        for i in others:
            ingredients[i] = _load_ingredient(_ingredient_path(out_path, i), variants[i])  # type: ignore[arg-type]
    elif distributed:
        torch.distributed.barrier()  # keep the ranks in step even when nothing was missing here

    state_dicts = [ingredients[i] for i in range(len(variants))]
    for i, sd in enumerate(state_dicts):
        check_masks(sd, masks, name=f"ingredient {i}")

    work = copy.deepcopy(model)
    if device is not None:
        work.to(device)

    def load(sd: Mapping[str, Tensor], recalibrate: bool) -> nn.Module:
        work.load_state_dict(sd)
        if recalibrate and has_bn:
            recalibrate_batchnorm(work, bn_data, num_batches=bn_batches, device=device)  # type: ignore[arg-type]
        return work

    def evaluate(sd: dict[str, Tensor]) -> float:
        return evaluate_accuracy(load(sd, True), val_data, device)

    ingredient_acc = [evaluate_accuracy(load(sd, False), val_data, device) for sd in state_dicts]
    uniform = uniform_soup(state_dicts)
    uniform_acc = evaluate(uniform)
    uniform = _with_buffers(work, uniform)  # keep the recalibrated BatchNorm statistics
    greedy = greedy_soup(state_dicts, evaluate, candidate_accuracy=ingredient_acc)
    greedy_acc, greedy_sd = greedy.accuracy, greedy.state_dict
    if len(greedy.ingredients) > 1 and has_bn:  # a lone ingredient keeps its trained statistics
        greedy_sd = _with_buffers(load(greedy.state_dict, True), greedy.state_dict)
    for name, sd in (("uniform soup", uniform), ("greedy soup", greedy_sd)):
        check_masks(sd, masks, name=name)

    models = []
    for sd in state_dicts:
        member = copy.deepcopy(model)
        member.load_state_dict(sd)
        models.append(member.to(device) if device is not None else member)
    ensemble_acc = prediction_ensemble(models, val_data, device)

    chosen = select
    if select == "best":
        chosen = "greedy" if greedy_acc >= uniform_acc else "uniform"
    result = SoupPhaseResult(
        ingredient_accuracy=ingredient_acc,
        uniform_accuracy=uniform_acc,
        greedy_accuracy=greedy_acc,
        greedy_ingredients=greedy.ingredients,
        ensemble_accuracy=ensemble_acc,
        mask_sparsity=masks.sparsity,
        soup_sparsity={
            "uniform": state_dict_sparsity(uniform, masks),
            "greedy": state_dict_sparsity(greedy_sd, masks),
        },
        uniform_state_dict=uniform,
        greedy_state_dict=greedy_sd,
        resumed=resumed,
        selected=chosen,
        ingredient_state_dicts=state_dicts,
    )
    if chosen is not None:
        model.load_state_dict(greedy_sd if chosen == "greedy" else uniform)
    if out_path is not None and rank == 0:
        meta = {"format": SOUP_FORMAT}
        save_safetensors(
            uniform, out_path / "uniform_soup.safetensors", {**meta, "soup": "uniform"}
        )
        save_safetensors(
            greedy_sd, out_path / "greedy_soup.safetensors", {**meta, "soup": "greedy"}
        )
        write_json(result.summary(), out_path / "soup_phase.json")
    return result


def _resolve_ranks(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None:
        return (dist.get_rank(), dist.get_world_size(), True) if distributed else (0, 1, False)
    if rank is None or world_size is None:
        raise ValueError("rank / world_size: give both or neither")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
    return rank, world_size, distributed and world_size > 1


def _wait_for_ranks(out_path: Path, missing: list[int], distributed: bool, wait_s: float) -> None:
    import time

    if distributed:
        torch.distributed.barrier()
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        left = [i for i in missing if not _ingredient_path(out_path, i).is_file()]
        if not left:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"ingredients {left} (trained by other ranks) are not in {str(out_path)!r}; "
                "run the other ranks, or pass wait_s= to wait for them"
            )
        time.sleep(min(5.0, max(0.05, wait_s / 100)))


def _with_buffers(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` with the model's current buffers (recalibrated BatchNorm statistics)."""
    out = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    for name, buf in model.named_buffers():
        if name in out:
            out[name] = buf.detach().cpu().clone()
    return out


def _run_parallel(
    model: nn.Module,
    masks: MaskSet,
    retrain_fn: Callable[..., StateDict],
    variants: list[dict[str, Any]],
    todo: list[int],
    workers: int,
    out_path: Path | None,
    ingredients: dict[int, dict[str, Tensor]],
) -> None:
    import tempfile

    import torch.multiprocessing as mp

    threads = max(1, torch.get_num_threads() // workers)
    cpu_model = copy.deepcopy(model).cpu()
    cpu_masks = masks.to("cpu")
    with tempfile.TemporaryDirectory(prefix="prunekit-soup-") as tmp:
        where = out_path if out_path is not None else Path(tmp)
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        ) as pool:
            futures = {
                i: pool.submit(
                    _retrain_job,
                    retrain_fn,
                    # one copy per task: torch.multiprocessing moves tensors to shared memory,
                    # so tasks handed the same model would train the same storage
                    copy.deepcopy(cpu_model),
                    cpu_masks,
                    variants[i],
                    i,
                    str(_ingredient_path(where, i)),
                )
                for i in todo
            }
            for i, future in futures.items():
                ingredients[i] = _load_ingredient(Path(future.result()), variants[i])
