"""``prunekit list [CATEGORY]``: everything registered, read from the registries themselves."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from prunekit.core.report import format_table

EXAMPLE = """Criteria come from one registry, one category per kind: 'criteria' (kind weights:
prunekit.prune, prune.criterion), 'llm methods' (kind llm: prunekit prune-llm), 'structured
criteria' (kind structured: channel/head groups) and 'data scores' (kind data: training
examples); each row says whether the criterion needs data.

examples:
  prunekit list                  every category
  prunekit list schedules        one category (names as shown, e.g. 'llm methods')
  prunekit list llm              the criteria of one kind: weights, llm, structured, data"""


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def plain(text: str) -> str:
    """Docstring markup as plain text: ``:class:`~a.B``` -> ``B``, double backquotes dropped."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "")


def _criteria_of(kind: str) -> Callable[[], dict[str, str] | None]:
    """The entries of one criterion kind, read from the one registry (None: not installed)."""

    def entries() -> dict[str, str] | None:
        from prunekit.criteria.registry import KINDS, list_criteria

        found = list_criteria(kind)
        if not found and KINDS[kind].optional:
            return None
        return {
            e.name: (f"[{', '.join((kind, *e.tags))}] " if e.tags else "") + e.doc for e in found
        }

    entries.__doc__ = kind
    return entries


def _allocations() -> dict[str, str]:
    from prunekit.core.allocation import ALLOCATIONS
    from prunekit.llm.methods import owl_sparsities

    return {
        **ALLOCATIONS.describe(),
        "N:M": "keep N of every M consecutive inputs, e.g. 2:4 (implies sparsity 1 - N/M)",
        "owl": _first_line(owl_sparsities) + " [LLMs only: prune-llm --owl, prune_llm(owl=True)]",
    }


def _schedules() -> dict[str, str]:
    from prunekit.recipes import list_recipes, schedule_names

    names = schedule_names()  # data pruning is selected by data_prune.enabled instead
    return {name: doc for name, doc in list_recipes().items() if name in names}


def _retraining() -> dict[str, str]:
    from prunekit.training.lr import RETRAIN_SCHEDULES

    return RETRAIN_SCHEDULES.describe()


def _lr_schedules() -> dict[str, str]:
    from prunekit.experiments.config import accepted_names
    from prunekit.training.lr import TRAIN_SCHEDULES

    names = accepted_names()["train.lr_schedule"]
    return {name: _first_line(TRAIN_SCHEDULES.get(name)) for name in sorted(names)}


def _optimizers() -> dict[str, str]:
    from prunekit.experiments.config import accepted_names

    text = {"sgd": "SGD (momentum, nesterov, weight decay)", "adam": "Adam",
            "adamw": "AdamW (decoupled weight decay)"}  # fmt: skip
    return {name: text.get(name, "") for name in accepted_names()["train.optimizer"]}


def _constraints() -> dict[str, str]:
    from prunekit.frank_wolfe.constraints import CONSTRAINTS

    return CONSTRAINTS.describe()


def _models() -> dict[str, str]:
    from prunekit.models import MODELS

    return MODELS.describe()


def _datasets() -> dict[str, str]:
    from prunekit.data import DATASETS

    return DATASETS.describe()


def _criterion_kinds() -> dict[str, str]:
    """``prunekit list`` category -> criterion kind, one category per kind of the registry."""
    from prunekit.criteria.registry import KINDS

    return {info.title: kind for kind, info in KINDS.items()}


# Category -> its entries (None: not part of this installation). The criteria come first, one
# category per kind of the criteria registry; any other registry adds one line here (the config
# validator's names are checked against these by the tests).
CATEGORIES: dict[str, Callable[[], dict[str, str] | None]] = {
    **{title: _criteria_of(kind) for title, kind in _criterion_kinds().items()},
    "allocations": _allocations,
    "schedules": _schedules,
    "retraining": _retraining,
    "lr schedules": _lr_schedules,
    "optimizers": _optimizers,
    "constraints": _constraints,
    "models": _models,
    "datasets": _datasets,
}


def registries() -> dict[str, dict[str, str]]:
    """Category -> {name: one-line description in plain text}."""
    out = {}
    for category, entries in CATEGORIES.items():
        found = entries()
        if found is not None:
            out[category] = {name: plain(doc) for name, doc in found.items()}
    return out


def _category(name: str) -> str | None:
    """The category ``name`` means: its title (``llm-methods`` too) or a criterion kind."""
    key = re.sub(r"[-_]+", " ", name.strip().lower())
    by_kind = {kind: title for title, kind in _criterion_kinds().items()}
    return key if key in CATEGORIES else by_kind.get(key)


def _table(category: str, entries: dict[str, str]) -> tuple[str, str]:
    """The heading and table of one category; criteria also say their kind and data needs."""
    kinds = _criterion_kinds()
    rows = {name: plain(doc) for name, doc in entries.items()}
    if category not in kinds:
        return category, format_table(["name", "description"], [[k, v] for k, v in rows.items()])
    from prunekit.criteria.registry import KINDS, get_criterion

    kind = kinds[category]
    heading = f"{category} (kind {kind}; used by {KINDS[kind].used_by})"
    table = format_table(
        ["name", "needs data", "description"],
        [
            [k, "yes" if get_criterion(k, kind=kind).requires_data else "no", v]
            for k, v in rows.items()
        ],
    )
    return heading, table


def run(args: argparse.Namespace) -> int:
    if args.category is not None and _category(args.category) is None:
        print(
            f"prunekit list: error: unknown category {args.category!r}; valid: "
            f"{', '.join(CATEGORIES)}",
            file=sys.stderr,
        )
        return 2
    wanted = _category(args.category) if args.category is not None else None
    for category in CATEGORIES:
        if wanted is not None and category != wanted:
            continue
        found = CATEGORIES[category]()
        if found is None:
            if wanted is not None:
                print(f"{category}: not part of this installation")
            continue
        heading, table = _table(category, found)
        print(f"\n{heading}")
        print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "list",
        help="list criteria, allocations, schedules, LLM methods, models, datasets, ...",
        description="List everything registered, one table per category.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "category",
        nargs="?",
        help=f"show one category only: {', '.join(CATEGORIES)}; or a criterion kind: "
        f"{', '.join(_criterion_kinds().values())}",
    )
    parser.set_defaults(func=run)
