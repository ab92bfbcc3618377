"""Experiment configs: typed dataclasses, YAML loading with ``--set`` overrides, and the config hash.

Every key is checked before any work starts; an error names the key path and the allowed values
(``prune.allocation: unknown allocation 'lampp'; allowed: erk, global, ...``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunekit.experiments.data_prune_config import DataPruneConfig
from prunekit.experiments.typed import ConfigError, from_dict, set_path, to_dict
from prunekit.experiments.yamlio import YAMLError, load_yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "DataPruneConfig",
    "ExperimentConfig",
    "MetricsConfig",
    "ModelConfig",
    "PruneConfig",
    "RetrainConfig",
    "SweepConfig",
    "TargetsConfig",
    "TrainConfig",
    "config_hash",
    "dense_hash",
    "ignores_sparsity",
    "schedule_names",
    "trains_dense",
    "load_config",
    "parse_overrides",
    "resolve",
]


def _recipe(name: str) -> Any:
    from prunekit.recipes.registry import get_recipe

    return get_recipe(name)


def schedule_names() -> list[str]:
    """The recipes ``prune.schedule`` may name (the recipe registry; ``prunekit list``)."""
    from prunekit.recipes.registry import schedule_names as names

    return names()


# Keys that change where or how a run is reported, not its result.
_NOT_HASHED = ("name", "output", "tracker", "sweep")
_TRAIN_NOT_HASHED = ("progress", "checkpoint_every", "threads")


def _choice(path: str, value: str, allowed: list[str], kind: str, quoted: bool = False) -> None:
    if value not in allowed:
        names = ", ".join(repr(a) if quoted else a for a in allowed)
        raise ConfigError(f"{path}: unknown {kind} {value!r}; allowed: {names}")


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def accepted_names() -> dict[str, list[str]]:
    """Config key -> the names its validator accepts, read from the registries themselves
    (``prunekit list`` shows every one; ``prune.allocation`` also takes N:M patterns)."""
    from prunekit.core.allocation import ALLOCATIONS
    from prunekit.criteria import CRITERIA
    from prunekit.data import DATASETS
    from prunekit.models import MODELS
    from prunekit.training.lr import RETRAIN_SCHEDULES

    train = typing.get_type_hints(TrainConfig)
    names = {
        "model.name": MODELS.names(),
        "data.name": DATASETS.names(),
        "train.lr_schedule": list(typing.get_args(train["lr_schedule"])),
        "train.optimizer": list(typing.get_args(train["optimizer"])),
        "prune.criterion": CRITERIA.names(),
        "prune.allocation": ALLOCATIONS.names(),
        "prune.schedule": schedule_names(),
        "retrain.schedule": RETRAIN_SCHEDULES.names(),
    }
    try:  # data-pruning scores, where this installation has them
        from prunekit.data_pruning import DATA_SCORES
    except ImportError:
        return names
    names["sweep.scores"] = names["data_prune.score"] = DATA_SCORES.names()
    return names


def _llm_hint(path: str, name: str) -> None:
    from prunekit.criteria.registry import criterion_names

    if name in criterion_names("llm") or name == "owl":
        raise ConfigError(
            f"{path}: {name!r} is a layer-wise LLM pruning method; use 'prunekit prune-llm' or "
            "prunekit.llm.prune_llm (criteria for 'prunekit run': prunekit list criteria)"
        )


@dataclass
class ModelConfig:
    """The model: a registry ``name``, the user's own ``factory`` or a local Hugging Face folder.

    - ``name`` from the model registry (``prunekit list models``);
    - ``factory: "mypkg.models:build"``: a function of the user's code returning an ``nn.Module``
      (imported only from the config file given on the command line, never from a run directory);
    - ``hf: path/to/local/dir`` with ``class: AutoModelForSequenceClassification``: a transformers
      class by name, loaded with ``trust_remote_code=False`` from local files only.

    ``kwargs`` go to the factory (``from_pretrained`` for ``hf``). ``in_features`` /
    ``in_channels`` / ``length`` / ``num_classes`` / ``vocab_size`` (``num_labels`` for ``hf``
    classification heads) are filled in from the data set when the factory takes them and the
    config leaves them out. With ``factory`` or ``hf``, ``name`` is only the label in reports.
    """

    name: str = "mlp"
    kwargs: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    hf: str | None = None
    hf_class: str | None = None

    def validate(self, path: str) -> None:
        from prunekit.experiments.sources import check_factory_spec, check_hf_class_name

        if self.factory is not None and self.hf is not None:
            raise ConfigError(f"{_key(path, 'factory')}: give either factory or hf, not both")
        if self.factory is not None:
            check_factory_spec(self.factory, _key(path, "factory"))
        elif self.hf is not None:
            if self.hf_class is None:
                raise ConfigError(
                    f"{_key(path, 'class')}: hf needs the transformers class by name, e.g. "
                    "class: AutoModelForSequenceClassification"
                )
            check_hf_class_name(self.hf_class, _key(path, "class"))
        else:
            if self.hf_class is not None:
                raise ConfigError(f"{_key(path, 'class')}: only used with hf: <local folder>")
            _choice(_key(path, "name"), self.name, accepted_names()["model.name"], "model")


@dataclass
class DataConfig:
    """``name`` from the data set registry, or the user's own ``factory: "mypkg.data:build"``
    returning a :class:`~prunekit.data.DatasetBundle`; ``kwargs`` go to either (e.g.
    ``num_samples``). With ``factory``, ``name`` is only the label in reports."""

    name: str = "mnist1d"
    kwargs: dict[str, Any] = field(default_factory=dict)
    calibration_batches: int = 4
    calibration_batch_size: int = 128
    factory: str | None = None

    def validate(self, path: str) -> None:
        from prunekit.experiments.sources import check_factory_spec

        if self.factory is not None:
            check_factory_spec(self.factory, _key(path, "factory"))
        else:
            _choice(_key(path, "name"), self.name, accepted_names()["data.name"], "dataset")
        for key in ("calibration_batches", "calibration_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{_key(path, key)}: expected a positive integer")


@dataclass
class TrainConfig:
    """The dense training run; retraining schedules are derived from its LR schedule."""

    epochs: float = 20.0
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: Literal["constant", "step", "cosine", "linear"] = "cosine"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    device: str | None = None
    threads: int | None = None
    checkpoint_every: int = 200
    progress: bool = False

    def validate(self, path: str) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"{_key(path, 'epochs')}: expected a positive number")
        if self.batch_size < 1:
            raise ConfigError(f"{_key(path, 'batch_size')}: expected a positive integer")
        if self.lr <= 0:
            raise ConfigError(f"{_key(path, 'lr')}: expected a positive number")
        if self.device is not None:
            from prunekit.core.device import resolve_device

            try:
                resolve_device(self.device)
            except ValueError as exc:
                raise ConfigError(f"{_key(path, 'device')}: {str(exc).split(': ', 1)[1]}") from None
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{_key(path, 'threads')}: expected a positive integer or null")
        if self.checkpoint_every < 1:
            raise ConfigError(f"{_key(path, 'checkpoint_every')}: expected a positive integer")


@dataclass
class TargetsConfig:
    """Which weights may be pruned (see :class:`prunekit.Targets`); module types by class name."""

    module_types: list[str] | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    keep_first: bool = False
    keep_last: bool = False

    def validate(self, path: str) -> None:
        import torch.nn as nn

        for i, name in enumerate(self.module_types or []):
            cls = getattr(nn, name, None)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ConfigError(
                    f"{_key(path, 'module_types')}[{i}]: {name!r} is not a torch.nn module class "
                    "(e.g. Linear, Conv2d)"
                )
        for key in ("include", "exclude"):
            for i, pattern in enumerate(getattr(self, key)):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ConfigError(
                        f"{_key(path, key)}[{i}]: bad regular expression: {err}"
                    ) from None

    def build(self) -> Any:
        import torch.nn as nn

        from prunekit.core.targets import Targets

        kwargs: dict[str, Any] = {
            "include": tuple(self.include),
            "exclude": tuple(self.exclude),
            "keep_first": self.keep_first,
            "keep_last": self.keep_last,
        }
        if self.module_types is not None:
            kwargs["module_types"] = tuple(getattr(nn, n) for n in self.module_types)
        return Targets(**kwargs)


@dataclass
class PruneConfig:
    """The pruning recipe: criterion, allocation, targets and schedule.

    ``schedule``: ``one_shot`` (prune once, retrain), ``imp`` (``phases`` prune-retrain phases;
    ``rewind`` = ``weights`` to theta_k with k = ``rewind_iteration``, ``lr`` for LR rewinding, or
    ``none`` for the ``retrain.schedule``), ``bimp`` (budgeted IMP: linear-decay dense training,
    ``retrain.epochs`` split over the phases, ALLR), ``gmp`` (cubic gradual pruning during training,
    from ``gmp_start`` to ``gmp_end`` of the run, every ``gmp_frequency`` iterations), ``rigl`` /
    ``granet`` (dynamic sparse training for ``train.epochs``; ``options`` are the recipe's
    keyword arguments such as ``delta_t``, ``alpha``, ``t_end_fraction``), ``at_init`` (prune
    the untrained model with ``criterion``, e.g. snip / grasp / synflow, then train it sparse),
    ``soups`` (Sparse Model Soups over ``phases`` phases of the dense model), ``sfw``
    (stochastic Frank-Wolfe training, then compression; ``options.sfw`` holds the
    :class:`~prunekit.training.SFWSpec` fields, ``null`` for the plain-optimizer baseline) and
    ``sap`` (PQ-Index-sized pruning rounds of the dense model). For these ``options`` are the
    recipe's keyword arguments that no other key sets.

    ``sparsity`` defaults to 0.9; an N:M ``allocation`` (e.g. ``2:4``) implies it (1 - N/M), so
    leave it out (or give exactly that value).
    """

    sparsity: float | None = None
    criterion: str = "magnitude"
    criterion_options: dict[str, Any] = field(default_factory=dict)
    allocation: str = "global"
    min_keep: int | float | None = None
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    schedule: str = "one_shot"
    phases: int = 3
    rewind: Literal["weights", "lr", "none"] = "none"
    rewind_iteration: int = 0
    gmp_start: float = 0.1
    gmp_end: float = 0.6
    gmp_frequency: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sparsity is None and _nm(self.allocation) is None:
            self.sparsity = 0.9

    def validate(self, path: str) -> None:
        names = accepted_names()
        _choice(_key(path, "schedule"), self.schedule, names["prune.schedule"], "schedule", True)
        if self.criterion not in names["prune.criterion"]:
            _llm_hint(_key(path, "criterion"), self.criterion)
        _choice(_key(path, "criterion"), self.criterion, names["prune.criterion"], "criterion")
        nm = _nm(self.allocation)
        if nm is None:
            _choice(
                _key(path, "allocation"),
                self.allocation,
                [*names["prune.allocation"], "N:M (e.g. 2:4)"],
                "allocation",
            )
        else:
            self._check_nm(path, nm)
        self._check_criterion_options(path)
        assert self.sparsity is not None  # set by __post_init__ / _check_nm
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"{_key(path, 'sparsity')}: expected a fraction in [0, 1), got {self.sparsity}"
            )
        if self.phases < 1:
            raise ConfigError(f"{_key(path, 'phases')}: expected a positive integer")
        if self.rewind_iteration < 0:
            raise ConfigError(f"{_key(path, 'rewind_iteration')}: expected >= 0")
        if self.options:
            allowed = _recipe(self.schedule).option_names()
            for key in self.options:
                if key not in allowed:
                    raise ConfigError(
                        f"{_key(path, 'options')}.{key}: unknown option of schedule "
                        f"{self.schedule!r}; allowed: {', '.join(allowed) or 'none'}"
                    )
        _recipe(self.schedule).validate(self, path)
        if not 0.0 <= self.gmp_start < self.gmp_end <= 1.0:
            raise ConfigError(
                f"{_key(path, 'gmp_start')}: expected 0 <= gmp_start < gmp_end <= 1, got "
                f"{self.gmp_start} and {self.gmp_end}"
            )

    def _check_nm(self, path: str, nm: tuple[int, int]) -> None:
        """N:M fixes the sparsity and prunes in one step: imply the sparsity, reject the rest."""
        n, m = nm
        if not 0 < n < m:
            raise ConfigError(
                f"{_key(path, 'allocation')}: expected N:M with 0 < N < M (e.g. 2:4), "
                f"got {self.allocation!r}"
            )
        implied = 1.0 - n / m
        if self.sparsity is None:
            self.sparsity = implied
        elif abs(float(self.sparsity) - implied) > 1e-9:
            raise ConfigError(
                f"{_key(path, 'sparsity')}: allocation {self.allocation!r} prunes exactly "
                f"{implied:.4g}; leave sparsity out or set it to {implied:.4g}, "
                f"got {self.sparsity}"
            )
        once = [n for n in schedule_names() if _recipe(n).prunes_once]
        if self.schedule not in once:
            raise ConfigError(
                f"{_key(path, 'schedule')}: N:M allocation {self.allocation!r} prunes to its "
                f"fixed pattern in one step; use one of {', '.join(once)}, "
                f"got {self.schedule!r}"
            )

    def _check_criterion_options(self, path: str) -> None:
        from prunekit.criteria import create_criterion

        try:
            create_criterion(self.criterion, **self.criterion_options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{_key(path, 'criterion_options')}: {err}") from None


def _nm(allocation: str) -> tuple[int, int] | None:
    from prunekit.core.allocation import parse_nm

    return parse_nm(allocation)


@dataclass
class RetrainConfig:
    """Retraining after each pruning step: length in epochs and the retraining LR schedule."""

    epochs: float | None = 2.0
    schedule: str = "llr"

    def validate(self, path: str) -> None:
        allowed = accepted_names()["retrain.schedule"]
        _choice(_key(path, "schedule"), self.schedule, allowed, "schedule")
        if self.epochs is not None and self.epochs < 0:
            raise ConfigError(f"{_key(path, 'epochs')}: expected a non-negative number or null")


@dataclass
class MetricsConfig:
    """Extra metrics: file sizes (dense vs compressed) and measured CPU latency."""

    file_sizes: bool = True
    latency: bool = False
    latency_repeats: int = 20


@dataclass
class SweepConfig:
    """The grid of ``prunekit sweep``: sparsities x methods x seeds.

    ``methods`` maps a method label to dotted overrides of this config, e.g.
    ``{lamp: {prune.allocation: lamp}, bimp: {prune.schedule: bimp}}``. Empty lists / mappings
    mean the single value of the base config.
    """

    sparsities: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int = 1
    # data pruning: kept fractions x data scores (see DataPruneConfig)
    fractions: list[float] = field(default_factory=list)
    scores: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:
        for i, s in enumerate(self.sparsities):
            if not 0.0 <= s < 1.0:
                raise ConfigError(f"{_key(path, 'sparsities')}[{i}]: expected a fraction in [0, 1)")
        for i, f in enumerate(self.fractions):
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"{_key(path, 'fractions')}[{i}]: expected a fraction in (0, 1]")
        if self.sparsities and (self.fractions or self.scores):
            raise ConfigError(
                f"{_key(path, 'sparsities')}: a data-pruning sweep varies {_key(path, 'fractions')}"
                " and prunes no weights; leave sparsities out"
            )
        if self.scores:
            from prunekit.data_pruning import DATA_SCORES

            for i, name in enumerate(self.scores):
                _choice(f"{_key(path, 'scores')}[{i}]", name, DATA_SCORES.names(), "data score")
        if self.workers < 1:
            raise ConfigError(f"{_key(path, 'workers')}: expected a positive integer")


@dataclass
class ExperimentConfig:
    """One experiment (``prunekit run``) or the base of a grid (``prunekit sweep``)."""

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dense_checkpoint: str | None = None
    prune: PruneConfig = field(default_factory=PruneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = 0
    method: str | None = None
    output: str = "results"
    tracker: Literal["none", "mlflow", "wandb"] = "none"
    sweep: SweepConfig = field(default_factory=SweepConfig)
    data_prune: DataPruneConfig = field(default_factory=DataPruneConfig)
    # Not config keys: where the config came from. ``allow_import`` is True only for the config
    # file the user gives on the command line (or code that says so); a config re-read from a
    # run directory never imports ``model.factory`` / ``data.factory``.
    allow_import: bool = field(default=False, init=False, repr=False, compare=False,
                               metadata={"runtime": True})  # fmt: skip
    source_dir: str | None = field(default=None, init=False, repr=False, compare=False,
                                   metadata={"runtime": True})  # fmt: skip
    # (path, SHA-256) of dense_checkpoint when the config was read: the run's identity
    checkpoint_digest: tuple[str, str | None] | None = field(
        default=None, init=False, repr=False, compare=False, metadata={"runtime": True}
    )

    def validate(self, path: str) -> None:
        if self.data_prune.enabled and self.prune.schedule != "one_shot":
            raise ConfigError(
                "data_prune: a data-pruning run trains on the kept subset and prunes no weights; "
                f"prune.schedule {self.prune.schedule!r} is not used there (leave it out)"
            )
        if self.dense_checkpoint is not None:
            self.checkpoint_digest = (self.dense_checkpoint, _file_digest(self.dense_checkpoint))
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ConfigError(f"name: expected letters, digits, '_', '-' or '.', got {self.name!r}")
        if self.dense_checkpoint is not None and not trains_dense(self):
            raise ConfigError(
                f"dense_checkpoint: schedule {self.prune.schedule!r} prunes during or before "
                "training; leave it out"
            )
        if self.dense_checkpoint is not None and self.prune.rewind == "weights":
            raise ConfigError(
                "prune.rewind: 'weights' needs the dense training run (its early weights); "
                "with dense_checkpoint use 'lr' or 'none'"
            )

    @property
    def label(self) -> str:
        """The method label used in reports (``method`` or criterion/allocation/schedule)."""
        if self.method:
            return self.method
        from prunekit.recipes.registry import recipe_for

        recipe = recipe_for(self)
        if recipe.label is not None:
            return recipe.label(self)
        p = self.prune
        return f"{p.criterion}-{p.allocation}-{p.schedule}"


def trains_dense(cfg: ExperimentConfig) -> bool:
    """True when the run starts from the shared dense model (its recipe has the dense stage)."""
    return cfg.data_prune.enabled or bool(_recipe(cfg.prune.schedule).trains_dense)


def ignores_sparsity(cfg: ExperimentConfig) -> bool:
    """True when ``prune.sparsity`` does not change the run: the recipe picks its own levels
    (``sap``: the PQ Index; ``sfw`` with explicit ``levels`` or ``low_rank``)."""
    if cfg.data_prune.enabled:
        return False
    return bool(_recipe(cfg.prune.schedule).ignores_sparsity(cfg.prune.options))


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` (values parsed as YAML)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. train.epochs=2)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
        except YAMLError as err:
            raise ConfigError(str(err)) from None
        out.append((key.strip(), value))
    return out


def resolve(
    data: dict[str, Any],
    overrides: list[tuple[str, Any]] | None = None,
    *,
    allow_import: bool = False,
    source_dir: str | None = None,
) -> ExperimentConfig:
    """Apply dotted overrides to plain data and build the typed config (errors name the key).

    ``allow_import``: the config may import ``model.factory`` / ``data.factory`` (only for the
    user's own config file; ``source_dir`` is searched for their modules first).
    """
    data = copy.deepcopy(data) if data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    for key, value in overrides or []:
        set_path(data, key, value)
    _user_sources(data)
    cfg = from_dict(ExperimentConfig, data)
    cfg.allow_import = bool(allow_import)
    cfg.source_dir = source_dir
    return cfg


def runtime_of(cfg: ExperimentConfig) -> dict[str, Any]:
    """The non-key state of ``cfg`` (import permission, config folder) for :func:`resolve`."""
    return {"allow_import": cfg.allow_import, "source_dir": cfg.source_dir}


def _user_sources(data: dict[str, Any]) -> None:
    """``model.class`` is stored as ``hf_class``; a factory / hf model is labelled by itself."""
    model, dataset = data.get("model"), data.get("data")
    if isinstance(model, dict):
        if "class" in model:
            if "hf_class" in model:
                raise ConfigError("model.class: give class or hf_class, not both")
            model["hf_class"] = model.pop("class")
        source = model.get("factory") or model.get("hf")
        if isinstance(source, str) and "name" not in model:
            model["name"] = _label(source)
    if isinstance(dataset, dict):
        source = dataset.get("factory")
        if isinstance(source, str) and "name" not in dataset:
            dataset["name"] = _label(source)


def _label(source: str) -> str:
    """``mypkg.models:build_cnn`` -> ``build_cnn``; ``path/to/bert-tiny`` -> ``bert-tiny``."""
    tail = source.rstrip("/\\").replace("\\", "/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", tail) or "custom"


def load_config(
    path: str | os.PathLike[str],
    overrides: list[str] | list[tuple[str, Any]] | None = None,
    *,
    allow_import: bool = False,
) -> ExperimentConfig:
    """Read a YAML config, apply ``--set`` overrides and validate every key before any work.

    The YAML is plain data (no tags; ``2:4`` stays a string; alias bombs are rejected).
    ``allow_import=True`` lets ``model.factory`` / ``data.factory`` import the user's code (searched
    first in the config's folder): pass it only for the user's own config, never for a file read
    back from a run directory.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config: no such file {str(p)!r}")
    try:
        data = load_yaml(p.read_text(), f"config {str(p)!r}")
    except YAMLError as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {str(p)!r}: not a UTF-8 text file") from None
    pairs = [o if isinstance(o, tuple) else None for o in overrides or []]
    if any(o is None for o in pairs):
        pairs = parse_overrides([str(o) for o in overrides or []])
    return resolve(data or {}, pairs, allow_import=allow_import, source_dir=str(p.resolve().parent))


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _checkpoint_sha256(cfg: ExperimentConfig) -> str | None:
    stored = cfg.checkpoint_digest
    if stored is not None and stored[0] == cfg.dense_checkpoint:
        return stored[1]
    return _file_digest(cfg.dense_checkpoint) if cfg.dense_checkpoint else None


def hashed_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The parts of the config that determine the result."""
    data = to_dict(cfg)
    for key in _NOT_HASHED:
        data.pop(key, None)
    for key in _TRAIN_NOT_HASHED:
        data["train"].pop(key, None)
    if data.get("dense_checkpoint"):
        # the weights, not only their path: retraining into the same file is a new dense model
        data["dense_checkpoint_sha256"] = _checkpoint_sha256(cfg)
    # Keys added for the user's own model and data: left out while unset (hashes stay stable).
    for section, keys in (("model", ("factory", "hf", "hf_class")), ("data", ("factory",))):
        for key in keys:
            if data[section].get(key) is None:
                data[section].pop(key, None)
    if not cfg.data_prune.enabled:
        data.pop("data_prune", None)  # runs without data pruning keep their hashes
    return data


def _file_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes (None when it does not exist yet), cached per size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _cached_digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(cfg: ExperimentConfig) -> str:
    """SHA-256 of the resolved config (minus output / tracker / sweep / progress settings)."""
    return _digest(hashed_dict(cfg))


def dense_hash(cfg: ExperimentConfig, lr_schedule: str | None = None) -> str:
    """Hash of what determines the dense model: model, data, train, seed, dense checkpoint."""
    data = hashed_dict(cfg)
    train = dict(data["train"])
    if lr_schedule is not None:
        train["lr_schedule"] = lr_schedule
    return _digest(
        {
            "model": data["model"],
            "data": {k: v for k, v in data["data"].items() if not k.startswith("calibration")},
            "train": train,
            "seed": data["seed"],
            "dense_checkpoint": data["dense_checkpoint"],
            **{k: v for k, v in data.items() if k == "dense_checkpoint_sha256"},
        }
    )
