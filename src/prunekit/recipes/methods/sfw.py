"""Compression-aware training with stochastic Frank-Wolfe (Zimmer, Spiegel and Pokutta 2022).

Two stages, the same for the Python API (:func:`sfw`, also ``prunekit.training.run_sfw``) and
``prunekit run`` (``prune.schedule: sfw``):

* ``train``: train from the initialisation with SFW inside the constraint set (or, with
  ``sfw=None``, with the plain optimizer of ``train``: the baseline); the Trainer checkpoints
  in ``train/ckpt`` so that a killed run resumes.
* ``compress``: compress a copy of the trained model at every level (magnitude, filter norm or
  truncated SVD), recalibrate BatchNorm, measure, optionally retrain and measure again. The
  context's model ends as the last level's (its masks in ``ctx.masks``); a factorised
  ``low_rank`` level changes the architecture, so there the model stays uncompressed.

Building blocks: :class:`SFWSpec` (constraint and optimizer settings),
:func:`make_sfw_optimizer` (an :class:`~prunekit.frank_wolfe.SFW` for the Trainer; its LR
schedule sets the Frank-Wolfe LR eta) and :class:`FrankWolfeCallback` (feasible start,
``fw_max_norm_ratio`` at every epoch end).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.device import resolve_device
from prunekit.core.masks import MaskSet
from prunekit.core.prune import prune as prune_model
from prunekit.core.serialization import write_json
from prunekit.core.targets import Targets
from prunekit.data.base import DatasetBundle
from prunekit.frank_wolfe.compress import low_rank, prune_filters
from prunekit.frank_wolfe.groups import constraints_for_model
from prunekit.frank_wolfe.optimizer import RESCALE_MODES, SFW
from prunekit.recipes.context import RunContext, metrics_of
from prunekit.recipes.executor import Stage
from prunekit.recipes.methods.prune_retrain import pruning_norm_change
from prunekit.recipes.registry import Recipe, register_recipe, run_recipe
from prunekit.recipes.spec import ExperimentResult, PhaseResult, PruneSpec, TrainSpec, spec_dict
from prunekit.training.lr import (
    LRSchedule,
    list_retrain_schedules,
    make_lr_schedule,
    make_retrain_schedule,
)
from prunekit.training.soups import recalibrate_batchnorm
from prunekit.training.trainer import Callback, Trainer

__all__ = [
    "COMPRESS",
    "DEFAULT_LEVELS",
    "CompressionResult",
    "FrankWolfeCallback",
    "SFWOptions",
    "SFWSpec",
    "make_sfw_optimizer",
    "sfw",
    "sfw_spec_fields",
]

COMPRESS = ("magnitude", "filters", "low_rank")
DEFAULT_LEVELS = {
    "magnitude": (0.5, 0.7, 0.8, 0.9, 0.95),
    "filters": (0.25, 0.5, 0.75),
    "low_rank": (0.5, 0.25, 0.125),
}


@dataclass
class SFWSpec:
    """Stochastic Frank-Wolfe settings (:func:`prunekit.frank_wolfe.constraints_for_model`, SFW).

    Attributes:
        constraint: the set of the prunable weights (``k_support``, ``k_sparse``,
            ``group_k_support``, ``spectral_k_support``, ``nuclear``, ``l1``, ``l2``, ``linf``).
        k / k_fraction: for the k-sets, a count or a fraction per layer (or of all targets with
            ``scope="global"``).
        tau / radius: L2 diameter ``2 * tau * E||W_init||`` per set, or a fixed radius.
        lr: the Frank-Wolfe learning rate eta; the Trainer's schedule (shape ``train.lr_schedule``)
            peaks at it.
        momentum / rescale / k_delay: as in :class:`~prunekit.frank_wolfe.SFW`.
        others / others_lr: the set for non-target parameters (biases, norms), or None for a
            momentum SGD step with ``others_lr`` (default: ``lr``), scaled with the schedule.
        scope: ``"layer"`` or ``"global"``.
        targets: the constrained (and later compressed) weights (default: Linear / Conv weights).
        options: extra constraint options (e.g. ``{"svd_method": "power"}``).
    """

    constraint: str = "k_support"
    k: int | float | None = None
    k_fraction: float | None = 0.05
    tau: float = 10.0
    radius: float | None = None
    lr: float = 1.0
    momentum: float = 0.9
    rescale: str | None = "gradient"
    k_delay: int = 0
    others: str | None = "l2"
    others_lr: float | None = None
    scope: str = "layer"
    targets: Targets | None = None
    options: dict[str, Any] = field(default_factory=dict)


_K_FREE = ("l1", "l2", "linf", "nuclear")
# SFWSpec fields handed to constraints_for_model under the same name
_GROUP_FIELDS = ("tau", "radius", "targets", "others", "others_lr", "scope")


def sfw_spec_fields() -> list[str]:
    """The :class:`SFWSpec` fields a config's ``prune.options.sfw`` may set (``targets`` come
    from ``prune.targets``)."""
    return [f.name for f in dataclasses.fields(SFWSpec) if f.name != "targets"]


def make_sfw_optimizer(model: nn.Module, sfw: SFWSpec) -> SFW:
    """An SFW optimizer over ``model`` built from ``sfw`` (not yet made feasible).

    Unconstrained groups with their own ``others_lr`` get ``lr_scale = others_lr / lr`` so that
    the Trainer's LR schedule scales them along with the Frank-Wolfe groups.
    """
    if not isinstance(sfw, SFWSpec):
        raise TypeError(f"sfw: expected an SFWSpec, got {type(sfw).__name__}")
    if sfw.rescale not in RESCALE_MODES:
        raise ValueError(
            f"rescale: expected 'gradient', 'diameter', 'fast_gradient' or None, got {sfw.rescale!r}"
        )
    k, k_fraction = sfw.k, sfw.k_fraction
    if sfw.constraint in _K_FREE:
        k, k_fraction = None, None
    elif k is not None:
        k_fraction = None
    shared = {name: getattr(sfw, name) for name in _GROUP_FIELDS}
    groups = constraints_for_model(
        model, sfw.constraint, k=k, k_fraction=k_fraction, **shared, **sfw.options
    )
    for group in groups:
        if group.get("constraint") is None and sfw.others_lr is not None and sfw.lr > 0:
            group["lr_scale"] = sfw.others_lr / sfw.lr
    return SFW(groups, lr=sfw.lr, momentum=sfw.momentum, rescale=sfw.rescale, k_delay=sfw.k_delay)


class FrankWolfeCallback(Callback):
    """Feasible start and feasibility reports for an SFW optimizer trained by the Trainer.

    On a fresh start (iteration 0) every constrained group is rescaled into its set; a resumed
    run keeps its checkpointed (already feasible) weights. At each epoch end the largest
    norm / radius ratio over the groups is added to the metrics as ``fw_max_norm_ratio``.
    With ``check_every_step`` the largest ratio seen after any step is kept in ``max_ratio``.
    """

    def __init__(self, check_every_step: bool = False) -> None:
        self.check_every_step = check_every_step
        self.max_ratio = 0.0
        self.scale_factors: list[float] = []

    @staticmethod
    def _optimizer(trainer: Trainer) -> SFW:
        if not isinstance(trainer.optimizer, SFW):
            raise TypeError(
                f"optimizer: FrankWolfeCallback needs an SFW optimizer, "
                f"got {type(trainer.optimizer).__name__}"
            )
        return trainer.optimizer

    def ratio(self, trainer: Trainer) -> float:
        """Largest norm / radius over the constrained groups now."""
        ratios = [r for r in self._optimizer(trainer).feasibility() if r is not None]
        return max(ratios, default=0.0)

    def on_fit_start(self, trainer: Trainer) -> None:
        optimizer = self._optimizer(trainer)
        if trainer.iteration == 0:
            self.scale_factors = optimizer.make_feasible()
        self.max_ratio = max(self.max_ratio, self.ratio(trainer))

    def on_step_end(self, trainer: Trainer, loss: Tensor) -> None:
        if self.check_every_step:
            self.max_ratio = max(self.max_ratio, self.ratio(trainer))

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        ratio = self.ratio(trainer)
        self.max_ratio = max(self.max_ratio, ratio)
        metrics["fw_max_norm_ratio"] = ratio


@dataclass
class CompressionResult(PhaseResult):
    """One compression level of :func:`sfw`.

    ``target_sparsity`` is the requested level (a sparsity, a fraction of filters removed, or a
    rank fraction for ``low_rank``); ``sparsity`` is the fraction of target weights that are zero
    (``low_rank``: 0); ``params_ratio`` is parameters after / before (``low_rank`` with
    factorisation shrinks the model; masks keep its size).
    """

    compress: str = "magnitude"
    params_ratio: float = 1.0
    ranks: dict[str, int] = field(default_factory=dict)


@dataclass
class SFWOptions:
    """The recipe's own options (the rest comes from the context: ``train``, ``prune.targets``
    for the compressed weights, ``retrain_epochs`` / ``retrain_schedule``, ``pretrained``).

    ``sfw``: the constraint and optimizer settings, None for the plain-optimizer baseline.
    ``compress`` / ``levels`` / ``allocation`` (None: ``global`` for magnitude, ``uniform`` for
    filters) / ``factorize``: how each level is compressed. ``recalibrate_bn`` / ``bn_batches``:
    BatchNorm statistics recomputed after compression. ``checkpoint_dir``: where a run in
    memory keeps its training checkpoint (a run directory uses ``train/ckpt``).
    """

    sfw: SFWSpec | None = field(default_factory=SFWSpec)
    compress: str = "magnitude"
    levels: list[float] = field(default_factory=lambda: list(DEFAULT_LEVELS["magnitude"]))
    allocation: str | None = None
    factorize: bool = True
    recalibrate_bn: bool = True
    bn_batches: int = 8
    checkpoint_dir: Path | None = None


def _check_levels(compress: str, levels: Sequence[float]) -> None:
    if compress not in COMPRESS:
        raise ValueError(f"compress: expected one of {', '.join(COMPRESS)}, got {compress!r}")
    if not levels:
        raise ValueError("levels: expected at least one compression level")
    for level in levels:
        ok = isinstance(level, (int, float)) and not isinstance(level, bool)
        if compress == "low_rank":
            ok = ok and 0.0 < level <= 1.0
        else:
            ok = ok and 0.0 <= level < 1.0
        if not ok:
            expected = "rank fractions in (0, 1]" if compress == "low_rank" else "values in [0, 1)"
            raise ValueError(f"levels: expected {expected} for {compress!r}, got {level!r}")


def _check_options(
    compress: str,
    levels: Sequence[float],
    retrain_epochs: float | None,
    retrain_schedule: str,
) -> None:
    _check_levels(compress, levels)
    if retrain_epochs is not None and (
        not isinstance(retrain_epochs, (int, float)) or retrain_epochs < 0
    ):
        raise ValueError(f"retrain_epochs: expected a non-negative number, got {retrain_epochs!r}")
    names = list_retrain_schedules()
    if retrain_schedule.lower() not in names:
        raise ValueError(
            f"retrain_schedule: unknown retraining schedule {retrain_schedule!r}; "
            f"valid: {', '.join(names)}"
        )
    retraining = retrain_epochs is None or retrain_epochs > 0  # None: the dense run's length
    if compress == "low_rank" and retrain_schedule.lower() == "allr" and retraining:
        raise ValueError("retrain_schedule: 'allr' needs pruning masks; not for low_rank")


def _bn_batches(model: nn.Module, data: DatasetBundle, batch_size: int, count: int) -> list[Any]:
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train), generator=gen, device="cpu")[: count * batch_size]
    x = data.train.x[order]
    return [(x[i : i + batch_size],) for i in range(0, len(x), batch_size)]


def _to_device(ctx: RunContext) -> torch.device:
    # the Trainer's default device; compression and evaluation run there too
    device = resolve_device(ctx.train.device, "train.device")
    ctx.model.to(device)
    return device


# ---------------------------------------------------------------------- stage 1: train
def _train(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
    o: SFWOptions = ctx.options
    _to_device(ctx)
    iterations, max_ratio = 0, None
    if not ctx.pretrained:
        total = ctx.original.total
        ckpt = directory / "ckpt" if directory is not None else o.checkpoint_dir
        optimizer: torch.optim.Optimizer | None = None  # None: the train spec's (baseline)
        schedule: LRSchedule = ctx.original
        check: FrankWolfeCallback | None = None
        if o.sfw is not None:
            optimizer = make_sfw_optimizer(ctx.model, o.sfw)
            schedule = make_lr_schedule(ctx.train.lr_schedule, o.sfw.lr, total)
            check = FrankWolfeCallback(check_every_step=True)
        callbacks: list[Callback] = [check] if check is not None else []
        trained_with = "sfw" if o.sfw is not None else ctx.train.optimizer
        ctx.log(f"sfw: training {total} iterations with {trained_with}")
        ctx.fit(schedule, total, None, ctx.train.seed, ckpt, callbacks, optimizer=optimizer)
        iterations = total
        max_ratio = check.max_ratio if check is not None else None
    if directory is None:  # in memory: the stand-in for the stage's weights file
        ctx.memory["trained"] = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return {"trained": ctx.metrics(), "iterations": iterations, "max_norm_ratio": max_ratio}


def _apply_train(ctx: RunContext, record: dict[str, Any]) -> None:
    ctx.extra["trained"] = record["trained"]  # the trained model before compression
    ctx.extra["max_norm_ratio"] = record["max_norm_ratio"]
    ctx.dense_iterations = int(record["iterations"])


# ---------------------------------------------------------------------- stage 2: compress
def _compress_copy(
    ctx: RunContext, level: float
) -> tuple[nn.Module, MaskSet | None, dict[str, int]]:
    """A copy of the trained model compressed at ``level``, its masks (None: low rank), ranks."""
    o: SFWOptions = ctx.options
    work = copy.deepcopy(ctx.model)
    targets = ctx.prune.targets
    if o.compress == "magnitude":
        allocation = o.allocation or "global"
        return work, prune_model(work, level, "magnitude", allocation, targets=targets), {}
    if o.compress == "filters":
        return work, prune_filters(work, level, o.allocation or "uniform", targets), {}
    result = low_rank(work, rank_fraction=level, targets=targets, factorize=o.factorize)
    return work, None, result.ranks


def _retrain_lr(ctx: RunContext, iterations: int, masks: MaskSet | None) -> LRSchedule:
    name = ctx.retrain_schedule.lower()
    if name != "allr":
        return make_retrain_schedule(name, ctx.original, iterations)
    norm_change, fraction = pruning_norm_change(ctx.model, None, masks or MaskSet())
    return make_retrain_schedule(
        name,
        ctx.original,
        iterations,
        norm_change=norm_change,
        pruned_fraction=max(fraction, 1e-12),
    )


def _compress(ctx: RunContext, directory: Path | None) -> dict[str, Any]:
    o: SFWOptions = ctx.options
    device = _to_device(ctx)
    bn_data = _bn_batches(ctx.model, ctx.data, ctx.train.batch_size, o.bn_batches)
    bn_data = bn_data if o.recalibrate_bn else []
    iterations = ctx.retrain_iterations()
    params_before = sum(p.numel() for p in ctx.model.parameters())
    phases: list[dict[str, Any]] = []
    for index, level in enumerate(o.levels, start=1):
        work, masks, ranks = _compress_copy(ctx, level)
        if bn_data:
            recalibrate_batchnorm(work, bn_data, device=device)
        pruned = metrics_of(work, ctx.data)
        retrained: dict[str, float] = {}
        lr0 = 0.0
        if iterations > 0:
            schedule = _retrain_lr(ctx, iterations, masks)
            lr0 = float(getattr(schedule, "eta0", schedule.eta_max))
            seed = ctx.train.seed + 1000 * index
            ctx.fit(schedule, iterations, masks, seed, None, model=work)
            retrained = metrics_of(work, ctx.data)
        ctx.log(f"sfw: level {level} ({o.compress}), sparsity {_sparsity(masks):.4f}")
        level_result = CompressionResult(
            phase=index,
            target_sparsity=float(level),
            sparsity=_sparsity(masks),
            retrain_schedule=ctx.retrain_schedule if iterations > 0 else "none",
            retrain_iterations=iterations,
            lr0=lr0,
            pruned=pruned,
            retrained=retrained,
            compress=o.compress,
            params_ratio=sum(p.numel() for p in work.parameters()) / params_before,
            ranks=ranks,
        )
        phases.append(dataclasses.asdict(level_result))
    # the context's model becomes the last level (as measured); a low-rank level may change
    # the architecture, so there it stays the uncompressed trained model
    ctx.masks = masks if masks is not None else MaskSet()
    if masks is not None:
        ctx.model.load_state_dict(work.state_dict())
    return {"phases": phases}


def _sparsity(masks: MaskSet | None) -> float:
    return masks.sparsity if masks is not None else 0.0


def _levels(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def _apply_compress(ctx: RunContext, record: dict[str, Any]) -> None:
    phases = record["phases"]
    ctx.phases.extend(phases)
    ctx.extra["final"] = phases[-1]["retrained"] or phases[-1]["pruned"]
    ctx.extra["levels"] = _levels(phases)


def _stages(ctx: RunContext) -> list[Stage]:
    o: SFWOptions = ctx.options
    # option errors surface before any training
    _check_options(o.compress, o.levels, ctx.retrain_epochs, ctx.retrain_schedule)
    return [
        Stage("train", _train, _apply_train, keeps_masks=False),
        Stage("compress", _compress, _apply_compress),
    ]


# ---------------------------------------------------------------------- config
_OPTION_NAMES = ["compress", "levels", "sfw", "factorize", "recalibrate_bn", "bn_batches"]


def _configure(cfg: Any) -> SFWOptions:
    options = dict(cfg.prune.options)
    fields = options.pop("sfw", {})
    spec = None if fields is None else SFWSpec(**fields, targets=cfg.prune.targets.build())
    compress = options.pop("compress", "magnitude")
    levels = options.pop("levels", None)
    if levels is None:  # low_rank: its default ranks; else one level, the config's sparsity
        levels = DEFAULT_LEVELS["low_rank"] if compress == "low_rank" else [cfg.prune.sparsity]
    return SFWOptions(spec, compress, list(levels), cfg.prune.allocation, **options)


def _validate(section: Any, path: str) -> None:
    """``prune.options`` of an sfw config: SFWSpec fields, compression and levels."""
    from prunekit.experiments.typed import ConfigError

    key = f"{path}.options" if path else "options"
    options = section.options
    if "sfw" in options:
        _check_spec_fields(options["sfw"], f"{key}.sfw")
    levels = options.get("levels", [section.sparsity])
    if not isinstance(levels, list):
        raise ConfigError(f"{key}.levels: expected a list of compression levels, got {levels!r}")
    if "levels" not in options and options.get("compress") == "low_rank":
        levels = list(DEFAULT_LEVELS["low_rank"])
    try:
        _check_levels(options.get("compress", "magnitude"), levels)
    except ValueError as err:
        raise ConfigError(f"{key}.{err}") from None


def _check_spec_fields(value: Any, path: str) -> None:
    from prunekit.experiments.typed import ConfigError

    if value is None:
        return  # the plain-optimizer baseline
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: expected a mapping of SFWSpec fields (or null for the baseline), "
            f"got {value!r}"
        )
    allowed = sfw_spec_fields()
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown SFWSpec field; allowed: {', '.join(allowed)}")
    if "options" in value and not isinstance(value["options"], dict):
        raise ConfigError(f"{path}.options: expected a mapping of constraint options")


def _ignores_sparsity(options: dict[str, Any]) -> bool:
    return "levels" in options or options.get("compress") == "low_rank"


def _label(cfg: Any) -> str:
    # the criterion is not used: name the optimizer and the compression
    p = cfg.prune
    trained = "sfw" if p.options.get("sfw", {}) is not None else cfg.train.optimizer
    return f"{trained}-{p.options.get('compress', 'magnitude')}-{p.allocation}"


register_recipe(
    Recipe(
        "sfw",
        "Stochastic Frank-Wolfe training in a constraint set, then compression.",
        _configure,
        _stages,
        trains_dense=False,
        option_names=lambda: list(_OPTION_NAMES),
        ignores_sparsity=_ignores_sparsity,
        validate=_validate,
        label=_label,
    )
)


# ---------------------------------------------------------------------- the Python API
def sfw(
    model: nn.Module,
    data: DatasetBundle,
    train: TrainSpec,
    sfw: SFWSpec | None,
    *,
    compress: str = "magnitude",
    levels: Sequence[float] | None = None,
    allocation: str | None = None,
    retrain_epochs: float | None = 0.0,
    retrain_schedule: str = "llr",
    factorize: bool = True,
    recalibrate_bn: bool = True,
    bn_batches: int = 8,
    pretrained: bool = False,
    out_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> ExperimentResult:
    """Train ``model`` with stochastic Frank-Wolfe, then compress it at every level.

    Args:
        model: trained in place (unless ``pretrained``); it ends trained and uncompressed (each
            level compresses its own copy).
        data: the dataset bundle.
        train: the run's length, batch size, LR schedule shape and seed. Frank-Wolfe training
            uses the schedule shape with peak ``sfw.lr``; retraining after compression uses
            ``train.optimizer`` with peak ``train.lr`` and a retraining schedule derived from
            ``train``'s dense schedule.
        sfw: constraint and optimizer settings (``SFWSpec()``: a k-support ball per layer with
            k = 5% of its entries, tau 10, lr 1.0). ``None`` trains with ``train.optimizer``
            instead: the baseline to compare with.
        compress: ``"magnitude"`` (unstructured, :func:`prunekit.prune`), ``"filters"`` (zero
            the output filters with the smallest L2 norm) or ``"low_rank"`` (truncated SVD).
        levels: sparsities (magnitude), fractions of filters removed (filters) or rank fractions
            (low_rank); defaults per method (``DEFAULT_LEVELS``).
        allocation: magnitude: any prunekit allocation (default ``"global"``); filters:
            ``"uniform"`` (default) or ``"global"``.
        retrain_epochs: retraining after compression (0: none; None: the length of the
            training run, as a config's ``retrain.epochs: null``). Masks stay fixed while
            retraining; a factorised low-rank model is retrained as it is.
        retrain_schedule: ``ft``, ``lrw``, ``slr``, ``clr``, ``llr`` or ``allr``.
        factorize: low_rank: replace layers by two thinner ones (else overwrite the weights).
        recalibrate_bn: recompute BatchNorm statistics after compression (``bn_batches``
            training batches), before measuring "without retraining".
        pretrained: skip training (compress ``model`` as it is).
        out_dir: keeps the training checkpoint (``train/``, so an interrupted run resumes) and
            ``result.json``.
        checkpoint_every: Trainer checkpoint interval in iterations (default: every epoch).

    Returns:
        An :class:`~prunekit.training.ExperimentResult` (``recipe="sfw"``): ``dense`` holds the
        trained model's metrics; ``phases`` one :class:`CompressionResult` per level with
        ``pruned`` (without retraining) and ``retrained`` (empty when ``retrain_epochs=0``);
        ``final`` the last level's; ``masks`` the last level's mask set (None for low_rank);
        ``config["max_norm_ratio"]`` the largest norm / radius seen (at most 1: feasible).
    """
    levels = list(levels) if levels is not None else list(DEFAULT_LEVELS.get(compress, ()))
    _check_options(compress, levels, retrain_epochs, retrain_schedule)
    if not isinstance(data, DatasetBundle):
        raise TypeError(f"data: expected a DatasetBundle, got {type(data).__name__}")
    if sfw is not None and not isinstance(sfw, SFWSpec):
        raise TypeError(f"sfw: expected an SFWSpec or None, got {type(sfw).__name__}")
    root = Path(out_dir) if out_dir is not None else None
    spec = train
    if root is not None:
        per_epoch = max(1, math.ceil(len(data.train) / train.batch_size))
        spec = dataclasses.replace(train, checkpoint_every=checkpoint_every or per_epoch)
    options = SFWOptions(
        sfw,
        compress,
        levels,
        allocation,
        factorize,
        recalibrate_bn,
        bn_batches,
        checkpoint_dir=root / "train" if root is not None else None,
    )
    ctx = run_recipe(
        "sfw",
        model,
        data,
        spec,
        PruneSpec(targets=sfw.targets if sfw is not None else None),
        options,
        retrain_epochs=retrain_epochs,
        retrain_schedule=retrain_schedule,
        pretrained=pretrained,
    )
    model.load_state_dict(ctx.memory["trained"])  # the API's model: trained, uncompressed
    phases = [CompressionResult(**p) for p in ctx.phases]
    result = ExperimentResult(
        "sfw",
        ctx.extra["trained"],
        phases,  # type: ignore[arg-type]
        ctx.extra["final"],
        ctx.dense_iterations,
        sum(p.retrain_iterations for p in phases),
        spec_dict(
            train=train,
            sfw=sfw,
            optimizer="sfw" if sfw is not None else train.optimizer,
            compress=compress,
            levels=levels,
            allocation=allocation,
            retrain_epochs=retrain_epochs,
            retrain_schedule=retrain_schedule,
            factorize=factorize,
            recalibrate_bn=recalibrate_bn,
            pretrained=pretrained,
            max_norm_ratio=ctx.extra["max_norm_ratio"],
        ),
        None if compress == "low_rank" else ctx.masks,
    )
    if root is not None:
        write_json(result.to_dict(), root / "result.json")
    return result
