"""``prunekit list [CATEGORY]``: everything registered, read from the registries themselves."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from prunekit.core.report import format_table

EXAMPLE = """examples:
  prunekit list                  every category
  prunekit list schedules        one category (names as shown, e.g. 'llm methods')"""


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def plain(text: str) -> str:
    """Docstring markup as plain text: ``:class:`~a.B``` -> ``B``, double backquotes dropped."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "")


def _criteria() -> dict[str, str]:
    from prunekit.criteria import CRITERIA

    return CRITERIA.describe()


def _allocations() -> dict[str, str]:
    from prunekit.core.allocation import ALLOCATIONS

    return {
        **ALLOCATIONS.describe(),
        "N:M": "keep N of every M consecutive inputs, e.g. 2:4 (implies sparsity 1 - N/M)",
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


def _llm_methods() -> dict[str, str]:
    from prunekit.llm import magnitude_mask, owl_sparsities, sparsegpt_prune, wanda_mask
    from prunekit.llm.engine import METHODS

    where = " [prunekit prune-llm / prunekit.llm.prune_llm]"
    docs = {"magnitude": magnitude_mask, "wanda": wanda_mask, "sparsegpt": sparsegpt_prune}
    text = {"sparsegpt": "SparseGPT (Frantar & Alistarh 2023): prune column by column and update "
            "the remaining weights from the layer's input Hessian."}  # fmt: skip
    out = {name: (text.get(name) or _first_line(docs.get(name))) + where for name in METHODS}
    out["owl"] = _first_line(owl_sparsities) + " [prune-llm --owl, prune_llm(owl=True)]"
    return out


def _structured() -> dict[str, str]:
    from prunekit.structured.criteria import STRUCTURED_CRITERIA

    return {
        name: f"{doc} [prunekit.structured.prune]"
        for name, doc in STRUCTURED_CRITERIA.describe().items()
    }


def _constraints() -> dict[str, str]:
    from prunekit.frank_wolfe.constraints import CONSTRAINTS

    return CONSTRAINTS.describe()


def _data_scores() -> dict[str, str] | None:
    try:  # the data-pruning scores, where this installation has them
        from prunekit.data_pruning import list_sections
    except ImportError:
        return None
    return list_sections()["data scores"]


def _models() -> dict[str, str]:
    from prunekit.models import MODELS

    return MODELS.describe()


def _datasets() -> dict[str, str]:
    from prunekit.data import DATASETS

    return DATASETS.describe()


# Category -> its entries (None: not part of this installation). A new registry adds one line
# here (the config validator's names are checked against these by the tests).
CATEGORIES: dict[str, Callable[[], dict[str, str] | None]] = {
    "criteria": _criteria,
    "allocations": _allocations,
    "schedules": _schedules,
    "retraining": _retraining,
    "lr schedules": _lr_schedules,
    "optimizers": _optimizers,
    "llm methods": _llm_methods,
    "structured criteria": _structured,
    "constraints": _constraints,
    "data scores": _data_scores,
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
    key = re.sub(r"[-_]+", " ", name.strip().lower())
    return key if key in CATEGORIES else None


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
        entries = {name: plain(doc) for name, doc in found.items()}
        print(f"\n{category}")
        print(format_table(["name", "description"], [[k, v] for k, v in entries.items()]))
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
        help=f"show one category only: {', '.join(CATEGORIES)}",
    )
    parser.set_defaults(func=run)
