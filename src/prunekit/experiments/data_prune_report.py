"""The data-pruning part of a report: accuracy vs kept fraction (table, CSV lines and plot)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.core.report import format_table

__all__ = [
    "FractionRow",
    "aggregate_fractions",
    "fraction_csv",
    "fraction_table",
    "plot_fractions",
    "split",
]

HEADER = ["method", "kept", "seeds", "accuracy", "std", "examples", "iterations"]


def split(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(weight-pruning runs, data-pruning runs)."""
    data = [r for r in results if r.get("data_prune")]
    return [r for r in results if not r.get("data_prune")], data


@dataclass
class FractionRow:
    """One (method, kept fraction) cell aggregated over seeds."""

    method: str
    fraction: float
    seeds: list[int]
    accuracy: float
    std: float
    kept: float
    iterations: float
    accuracies: list[float] = field(default_factory=list)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def aggregate_fractions(results: list[dict[str, Any]], metric: str) -> list[FractionRow]:
    """Rows per (method, kept fraction), plus ``dense`` (all data) per distinct baseline."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    dense: dict[int, float] = {}
    for r in results:
        dp = r["data_prune"]
        groups.setdefault((str(r["method"]), round(float(dp["fraction"]), 6)), []).append(r)
        if metric in r.get("dense", {}):
            dense.setdefault(int(r.get("seed", 0)), float(r["dense"][metric]))
    rows = []
    if dense:
        accs = [dense[s] for s in sorted(dense)]
        n = float(results[0]["data_prune"]["num_examples"])
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(FractionRow("dense", 1.0, sorted(dense), _mean(accs), std, n,
                                float(results[0]["iterations"]["dense"]), accs))  # fmt: skip
    for (method, fraction), group in sorted(groups.items()):
        group.sort(key=lambda r: r.get("seed", 0))
        accs = [float(r["final"].get(metric, float("nan"))) for r in group]
        rows.append(
            FractionRow(
                method,
                fraction,
                [int(r.get("seed", 0)) for r in group],
                _mean(accs),
                statistics.stdev(accs) if len(accs) > 1 else 0.0,
                _mean([float(r["data_prune"]["kept"]) for r in group]),
                _mean([float(r["data_prune"]["iterations"]) for r in group]),
                accs,
            )
        )
    return rows


def _cells(row: FractionRow, metric: str) -> list[str]:
    scale = 100.0 if metric.endswith("top1") else 1.0
    return [row.method, f"{row.fraction:.0%}", str(len(row.seeds)), f"{row.accuracy * scale:.2f}",
            f"{row.std * scale:.2f}", f"{row.kept:.0f}", f"{row.iterations:.0f}"]  # fmt: skip


def _header(metric: str) -> list[str]:
    name = "top-1 %" if metric.endswith("top1") else metric
    return [name if h == "accuracy" else ("± std" if h == "std" else h) for h in HEADER]


def fraction_table(rows: list[FractionRow], metric: str, markdown: bool = False) -> str:
    """Accuracy vs kept fraction as a terminal table or GitHub Markdown."""
    header = _header(metric)
    if not markdown:
        return format_table(header, [_cells(r, metric) for r in rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r, metric)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_fractions(rows: list[FractionRow], path: str | Path, metric: str) -> Path:
    """Accuracy vs kept fraction, one line per method (std over seeds as error bars)."""
    from prunekit.experiments.plots import plot_lines

    return plot_lines(
        rows,
        path,
        metric,
        x="fraction",
        xlabel="kept fraction of the training set (%)",
        title="accuracy vs kept fraction (data pruning)",
        dense_label="all data",
    )


def fraction_csv(rows: list[FractionRow], metric: str) -> str:
    """The data-pruning rows as CSV with exact numbers."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "kept_fraction", "seeds", f"{metric}_mean", f"{metric}_std",
                     "kept_examples", "iterations"])  # fmt: skip
    for r in rows:
        writer.writerow([r.method, r.fraction, " ".join(map(str, r.seeds)), r.accuracy, r.std,
                         r.kept, r.iterations])  # fmt: skip
    return buf.getvalue()


def fraction_groups(results: list[dict[str, Any]], group: Any) -> list[dict[str, Any]]:
    """Data-pruning runs per (data set, model) (``group``: the report's grouping function), each
    with its rows, metric and terminal table."""
    out = []
    for key, members in group(results).items():
        metric = next(
            (k for k in ("test_top1", "test_perplexity", "test_loss")
             if all(k in r.get("final", {}) for r in members)),
            "test_loss",
        )  # fmt: skip
        rows = aggregate_fractions(members, metric)
        out.append({"dataset": key[0], "model": key[1], "metric": metric, "rows": rows,
                    "runs": members, "table": fraction_table(rows, metric)})  # fmt: skip
    return out


def fraction_groups_csv(groups: list[dict[str, Any]]) -> str:
    """Every group's rows as one CSV with ``dataset``, ``model`` and ``metric`` columns."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["dataset", "model", "method", "kept_fraction", "seeds", "mean", "std",
                     "kept_examples", "iterations", "metric"])  # fmt: skip
    for g in groups:
        for r in g["rows"]:
            writer.writerow([g["dataset"], g["model"], r.method, r.fraction,
                             " ".join(map(str, r.seeds)), r.accuracy, r.std, r.kept,
                             r.iterations, g["metric"]])  # fmt: skip
    return buf.getvalue()
