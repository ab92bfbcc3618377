"""``prunekit list``: what is registered."""

from __future__ import annotations

import argparse

from prunekit.allocation import ALLOCATIONS
from prunekit.criteria import CRITERIA
from prunekit.data import DATASETS
from prunekit.frank_wolfe.constraints import CONSTRAINTS
from prunekit.models import MODELS
from prunekit.report import format_table
from prunekit.schedules import SCHEDULES
from prunekit.training.lr import RETRAIN_SCHEDULES


def registries() -> dict[str, dict[str, str]]:
    """Section name -> {entry: one-line description}. Later registries add themselves here."""
    sections = {
        "criteria": CRITERIA.describe(),
        "allocations": {
            **ALLOCATIONS.describe(),
            "N:M": "keep N of every M consecutive inputs, e.g. 2:4",
        },
        "models": MODELS.describe(),
    }
    for name, registry in EXTRA_REGISTRIES.items():
        sections[name] = registry.describe()
    return sections


EXTRA_REGISTRIES: dict = {
    "schedules": SCHEDULES,
    "retraining": RETRAIN_SCHEDULES,
    "datasets": DATASETS,
    "constraints": CONSTRAINTS,
}


def run(args: argparse.Namespace) -> int:
    for section, entries in registries().items():
        if args.section and section != args.section:
            continue
        print(f"\n{section}")
        print(format_table(["name", "description"], [[k, v] for k, v in entries.items()]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "list",
        help="list criteria, allocations, schedules, models and datasets",
        description="List everything registered.\n\nexample:\n  prunekit list criteria",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("section", nargs="?", help="show one section only (e.g. criteria)")
    parser.set_defaults(func=run)
