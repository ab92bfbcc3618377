"""The recipe registry: every published method is one entry that builds its stages.

``prunekit run`` looks the config's ``prune.schedule`` up here (``data_prune`` when
``data_prune.score`` is set); ``prunekit list``, the config validator and the docs table read the
same entries, so a new recipe is one module plus one :func:`register_recipe` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunekit.core.registry import Registry
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage

__all__ = [
    "RECIPES",
    "Recipe",
    "get_recipe",
    "list_recipes",
    "recipe_for",
    "recipes_table",
    "register_recipe",
    "run_recipe",
    "schedule_names",
]


@dataclass(frozen=True)
class Recipe:
    """A registered method.

    Attributes:
        name: the ``prune.schedule`` value.
        doc: one line for ``prunekit list`` and the docs.
        configure: ``configure(cfg) -> options``: the recipe's typed options from an
            :class:`~prunekit.experiments.config.ExperimentConfig` (the CLI path).
        stages: ``stages(ctx) -> [Stage, ...]``; raises a ValueError for options it cannot run
            before any stage starts.
        trains_dense: the recipe starts from the shared dense model (its first stage is the
            dense stage); False for methods that prune during or before one training run.
        dense_lr_schedule: the LR schedule the dense run uses instead of ``train.lr_schedule``.
        option_names: ``option_names()`` lists the keys ``prune.options`` may set.
        prunes_once: the recipe prunes in one step, so a fixed N:M pattern fits it.
        ignores_sparsity: ``ignores_sparsity(options) -> bool``: ``prune.sparsity`` does not
            change the run (the recipe picks its own levels).
        selected_by: the config key that selects it (``prune.schedule``, or
            ``data_prune.score`` for data pruning).
        prunes_weights: False for recipes that prune no weights (data pruning).
        validate: ``validate(section, path)`` checks the recipe's keys of the config's
            ``prune`` section (``path``: its key path, e.g. ``"prune"``) and raises a
            :class:`~prunekit.experiments.typed.ConfigError` naming the key.
        label: ``label(cfg) -> str``: the method label in reports (default
            ``<criterion>-<allocation>-<schedule>``).
    """

    name: str
    doc: str
    configure: Callable[[Any], Any]
    stages: Callable[[RunContext], list[Stage]]
    trains_dense: bool = True
    dense_lr_schedule: str | None = None
    option_names: Callable[[], list[str]] = lambda: []
    prunes_once: bool = False
    ignores_sparsity: Callable[[dict[str, Any]], bool] = lambda options: False
    selected_by: str = "prune.schedule"
    prunes_weights: bool = True
    validate: Callable[[Any, str], None] = lambda section, path: None
    label: Callable[[Any], str] | None = None


RECIPES: Registry[Recipe] = Registry("schedule")


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry (a duplicate name raises a ValueError)."""
    return RECIPES.register(recipe.name, doc=recipe.doc)(recipe)


def get_recipe(name: str, *, argument: str = "prune.schedule") -> Recipe:
    """The registered recipe ``name``; an unknown name lists the valid ones."""
    _load_builtins()
    return RECIPES.get(name, argument=argument)


def run_recipe(
    name: str, model: Any, data: Any, train: Any, prune: Any, options: Any, **context: Any
) -> RunContext:
    """Run recipe ``name``'s stages in memory on ``model`` (the Python API's path); returns the
    final context. ``context`` sets further :class:`RunContext` fields (``retrain_epochs``,
    ``pretrained``, ``memory``, ...)."""
    import dataclasses

    from prunekit.recipes.executor import execute

    recipe = get_recipe(name)
    if recipe.dense_lr_schedule is not None:
        train = dataclasses.replace(train, lr_schedule=recipe.dense_lr_schedule)
    ctx = RunContext(model, data, train, prune, options=options, **context)
    return execute(recipe.stages(ctx), ctx)


def recipe_for(cfg: Any) -> Recipe:
    """The recipe a config runs: one selected by another key when that key is set (data
    pruning: ``data_prune.score``), else ``prune.schedule``'s."""
    _load_builtins()
    for name in RECIPES.names():
        recipe = RECIPES.get(name)
        if recipe.selected_by == "prune.schedule":
            continue
        value: Any = cfg
        for part in recipe.selected_by.split("."):
            value = getattr(value, part, None)
        if value is not None:
            return recipe
    return get_recipe(cfg.prune.schedule)


def list_recipes() -> dict[str, str]:
    """Name -> one-line description of every registered recipe."""
    _load_builtins()
    return RECIPES.describe()


def schedule_names() -> list[str]:
    """The recipes a config's ``prune.schedule`` may name."""
    _load_builtins()
    return [n for n in RECIPES.names() if RECIPES.get(n).selected_by == "prune.schedule"]


def recipes_table() -> str:
    """The Markdown table of every registered recipe (docs/architecture.md holds it, checked
    by the docs tests): name, what selects it, whether it starts from the dense model, doc."""
    _load_builtins()
    rows = ["| recipe | selected by | starts from the dense model | what it does |",
            "| --- | --- | --- | --- |"]  # fmt: skip
    for name in RECIPES.names():
        r = RECIPES.get(name)
        key = (
            f"`{r.selected_by}: {name}`"
            if r.selected_by == "prune.schedule"
            else (f"`{r.selected_by}`")
        )
        rows.append(f"| `{name}` | {key} | {'yes' if r.trains_dense else 'no'} | {r.doc} |")
    return "\n".join(rows)


def _load_builtins() -> None:
    # Importing the modules registers them; lazily, so that the registry has no import cycle.
    from prunekit.recipes import builtins  # noqa: F401
