"""Reports over finished runs: method x sparsity tables (terminal, Markdown, CSV) and plots.

Columns follow ShrinkBench: accuracy (mean and sample standard deviation over seeds), parameters,
non-zero parameters, dense MACs, non-zero MACs, theoretical speedup (dense / non-zero MACs) and
compression ratio (parameters / non-zeros). Cost columns are means over seeds; the CSV also has
the mean global PQ Index of the final weights (Diao et al., 2023). The MACs ratio is labelled theoretical;
with ``latency=`` the dense and final models of each run are also timed (see
:mod:`prunekit.experiments.latency`) and the measured columns say so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.core.report import format_table
from prunekit.experiments.latency import LatencyOptions

__all__ = [
    "ReportRow",
    "aggregate",
    "collect_results",
    "format_rows",
    "skipped_lines",
    "write_report",
]

HEADER = [
    "method",
    "sparsity",
    "seeds",
    "accuracy",
    "std",
    "params",
    "nonzeros",
    "dense MACs",
    "non-zero MACs",
    "MACs speedup (theoretical)",
    "compression",
]
LATENCY_HEADER = ["dense ms (measured)", "final ms (measured)", "speedup (measured)"]


def collect_results(
    directory: str | Path, skipped: list[tuple[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Every finished run under ``directory`` (an output root, a ``runs`` folder or one run).

    A ``result.json`` that cannot be read (truncated, corrupt, not UTF-8) is left out; when
    ``skipped`` is given, ``(path, reason)`` is appended to it for each one so callers can warn.
    """
    root = Path(directory)
    if not root.exists():
        raise FileNotFoundError(f"directory: no such directory {str(root)!r}")
    files = [root / "result.json"] if (root / "result.json").is_file() else []
    files += sorted(p for p in root.rglob("result.json") if p.parent != root)
    results = []
    seen: set[str] = set()
    for path in files:
        if {"mlruns", "wandb"} & set(path.parts):
            continue  # tracker copies of a run's result
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            if skipped is not None:
                skipped.append((str(path), str(err).splitlines()[0] if str(err) else "unreadable"))
            continue
        if isinstance(data, dict) and "final" in data and "method" in data:
            data.setdefault("run_dir", str(path.parent))
            key = str(Path(data["run_dir"]).name) + str(data.get("config_hash"))
            if key in seen:
                continue
            seen.add(key)
            results.append(data)
    return results


@dataclass
class ReportRow:
    """One (method, sparsity) cell aggregated over seeds."""

    method: str
    sparsity: float
    seeds: list[int]
    accuracy: float
    std: float
    params: float
    nonzeros: float
    dense_macs: float
    nonzero_macs: float
    speedup: float
    compression: float
    runs: list[str] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    pq_index: float = float("nan")
    dense_ms: float = float("nan")  # measured latency, mean over seeds (NaN: not measured)
    final_ms: float = float("nan")

    @property
    def measured_speedup(self) -> float:
        """Measured dense / final latency (NaN when not measured)."""
        return self.dense_ms / self.final_ms


def _metric_key(results: list[dict[str, Any]]) -> str:
    for key in ("test_top1", "test_perplexity", "test_loss"):
        if all(key in r.get("final", {}) for r in results):
            return key
    return "test_loss"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def expand_levels(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per compression level for runs that report several (``sfw``); costs and the
    PQ Index belong to the level of the saved model only (``saved``)."""
    out = []
    for r in results:
        levels = r.get("levels")
        if not levels:
            out.append(r)
            continue
        for i, level in enumerate(levels):
            entry = dict(r, target_sparsity=level["target_sparsity"], final=level["final"])
            if not level.get("saved", i == len(levels) - 1):
                entry.update(costs={}, pq_index=None)
            out.append(entry)
    return out


def aggregate(results: list[dict[str, Any]], metric: str | None = None) -> list[ReportRow]:
    """Rows per (method, target sparsity), plus a ``dense`` row per distinct dense baseline.

    A run with several compression levels (``sfw``) gives one row per level.
    """
    results = expand_levels(results)
    metric = metric or _metric_key(results)
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        key = (str(r["method"]), round(float(r.get("target_sparsity", r.get("sparsity", 0))), 6))
        groups.setdefault(key, []).append(r)
    rows = []
    dense_accs: dict[int, float] = {}
    dense_costs: dict[int, dict[str, Any]] = {}
    for r in results:
        if metric in r.get("dense", {}):
            dense_accs.setdefault(int(r.get("seed", 0)), float(r["dense"][metric]))
            dense_costs.setdefault(int(r.get("seed", 0)), r.get("costs", {}))
    if dense_accs:
        dense_ms = _latency(results, "dense_ms")
        accs = [dense_accs[s] for s in sorted(dense_accs)]
        costs = next(iter(dense_costs.values()))
        params, dense = float(costs.get("params", 0)), float(costs.get("dense_macs", 0))
        rows.append(
            ReportRow(
                "dense",
                0.0,
                sorted(dense_accs),
                _mean(accs),
                _std(accs),
                params,
                params,
                dense,
                dense,
                1.0,
                1.0,
                [],
                accs,
                dense_ms=dense_ms,
                final_ms=dense_ms,
            )  # fmt: skip
        )
    for (method, sparsity), group in sorted(groups.items()):
        group.sort(key=lambda r: r.get("seed", 0))
        accs = [float(r["final"].get(metric, float("nan"))) for r in group]

        def cost(key: str, group: list[dict[str, Any]] = group) -> float:
            return _mean([float(r.get("costs", {}).get(key, float("nan"))) for r in group])

        rows.append(
            ReportRow(
                method,
                sparsity,
                [int(r.get("seed", 0)) for r in group],
                _mean(accs),
                _std(accs),
                cost("params"),
                cost("nonzeros"),
                cost("dense_macs"),
                cost("nonzero_macs"),
                cost("speedup"),
                cost("compression"),
                [str(r.get("run_dir", "")) for r in group],
                accs,
                _mean(
                    [float((r.get("pq_index") or {}).get("global", float("nan"))) for r in group]
                ),
                dense_ms=_latency(group, "dense_ms"),
                final_ms=_latency(group, "final_ms"),
            )
        )
    return rows


def _latency(results: list[dict[str, Any]], key: str) -> float:
    """Mean measured latency over the runs that were timed (NaN when none was)."""
    return _mean([float(r["measured_latency"][key]) for r in results if r.get("measured_latency")])


def _has_latency(rows: list[ReportRow]) -> bool:
    return any(not math.isnan(r.final_ms) for r in rows)


def _num(x: float) -> str:
    if math.isnan(x):
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _cells(row: ReportRow, metric: str, latency: bool = False) -> list[str]:
    scale = 100.0 if metric.endswith("top1") else 1.0
    return [
        row.method,
        f"{row.sparsity:.2%}" if row.method != "dense" else "0%",
        str(len(row.seeds)),
        f"{row.accuracy * scale:.2f}",
        f"{row.std * scale:.2f}",
        _num(row.params),
        _num(row.nonzeros),
        _num(row.dense_macs),
        _num(row.nonzero_macs),
        _ratio(row.speedup),
        _ratio(row.compression),
    ] + ([_ms(row.dense_ms), _ms(row.final_ms), _ratio(row.measured_speedup)] if latency else [])


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


def _header(metric: str, latency: bool = False) -> list[str]:
    name = "top-1 %" if metric.endswith("top1") else metric
    header = [name if h == "accuracy" else ("± std" if h == "std" else h) for h in HEADER]
    return header + (LATENCY_HEADER if latency else [])


def format_rows(rows: list[ReportRow], metric: str = "test_top1") -> str:
    """The terminal table."""
    latency = _has_latency(rows)
    return format_table(_header(metric, latency), [_cells(r, metric, latency) for r in rows])


def markdown_table(rows: list[ReportRow], metric: str = "test_top1") -> str:
    """The table as GitHub Markdown."""
    latency = _has_latency(rows)
    header = _header(metric, latency)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(_cells(r, metric, latency)) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[ReportRow], metric: str = "test_top1") -> str:
    """Machine-readable CSV with exact numbers (one line per method x sparsity)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "method",
            "sparsity",
            "seeds",
            f"{metric}_mean",
            f"{metric}_std",
            "params",
            "nonzeros",
            "dense_macs",
            "nonzero_macs",
            "theoretical_speedup",
            "compression",
            "pq_index",
            "runs",
            "dense_latency_ms",
            "final_latency_ms",
            "measured_speedup",
        ]  # fmt: skip
    )
    for r in rows:
        writer.writerow(
            [
                r.method,
                r.sparsity,
                " ".join(map(str, r.seeds)),
                r.accuracy,
                r.std,
                r.params,
                r.nonzeros,
                r.dense_macs,
                r.nonzero_macs,
                r.speedup,
                r.compression,
                r.pq_index,
                " ".join(r.runs),
                r.dense_ms,
                r.final_ms,
                r.measured_speedup,
            ]  # fmt: skip
        )
    return buf.getvalue()


def group_key(result: dict[str, Any]) -> tuple[str, str]:
    """(data set, model) of a run: from its result, else from its recorded config (as data)."""
    dataset, model = result.get("dataset"), result.get("model")
    if not (isinstance(dataset, str) and isinstance(model, str)):
        config = _run_config(result.get("run_dir"))
        dataset = dataset if isinstance(dataset, str) else _name_of(config.get("data"))
        model = model if isinstance(model, str) else _name_of(config.get("model"))
    return str(dataset), str(model)


def _name_of(section: Any) -> str:
    return str(section.get("name", "unknown")) if isinstance(section, dict) else "unknown"


def _run_config(run_dir: Any) -> dict[str, Any]:
    from prunekit.experiments.yamlio import YAMLError, load_yaml

    if not run_dir:
        return {}
    path = Path(str(run_dir)) / "config.yaml"
    try:
        data = load_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def group_results(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs per (data set, model), in sorted order: only runs of one group are compared."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(group_key(r), []).append(r)
    return dict(sorted(groups.items()))


def _slug(key: tuple[str, str]) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.\-]+", "-", part).strip("-") or "x" for part in key)


def write_report(
    directory: str | Path,
    out: str | Path | None = None,
    *,
    plots: bool = True,
    latency: LatencyOptions | None = None,
) -> dict[str, Any]:
    """Collect the runs under ``directory``; write ``report.md``, ``report.csv`` and PNG plots.

    Runs are grouped by (data set, model): each group gets its own table and plots, and rows of
    different groups are never compared (with several groups the plot names end in
    ``_<dataset>_<model>``). Returns ``{"groups", "rows", "table", "files", "runs", "metric",
    "skipped"}`` (``rows`` / ``table`` / ``metric`` cover every group, the first group's metric;
    ``skipped``: unreadable results, also warned about under the tables); files go to ``out``
    (default ``directory``).
    With ``latency`` the dense and final model of every run are timed on this machine and the
    tables gain measured columns. Data-pruning runs get their own accuracy-vs-kept-fraction
    table per group (``fraction_groups``), ``report_data_pruning.csv`` and
    ``accuracy_vs_kept_fraction[_<dataset>_<model>].png``.
    """
    from prunekit.core.serialization import make_dirs, write_text_atomic
    from prunekit.experiments import data_prune_report as dpr

    skipped: list[tuple[str, str]] = []
    everything = collect_results(directory, skipped)
    if not everything:
        unreadable = f"; {len(skipped)} unreadable: {skipped[0][0]!r} ..." if skipped else ""
        raise ValueError(
            f"directory: no finished runs (result.json) under {str(directory)!r}{unreadable}"
        )
    results, data_runs = dpr.split(everything)
    if latency is not None:
        from prunekit.experiments.latency import measure_run_latency

        cache: dict = {}
        for r in results:
            r["measured_latency"] = measure_run_latency(r, latency, cache)
    target = Path(out) if out is not None else Path(directory)
    make_dirs(target)
    grouped = group_results(results)
    several = len(grouped) > 1
    groups = []
    for key, members in grouped.items():
        metric = _metric_key(members)
        rows = aggregate(members, metric)
        groups.append({"dataset": key[0], "model": key[1], "metric": metric, "rows": rows,
                       "runs": members, "table": format_rows(rows, metric)})  # fmt: skip
    title = "{g[dataset]} / {g[model]}: {n} runs"
    table = "\n\n".join(
        (title.format(g=g, n=len(g["runs"])) + "\n" if several else "") + g["table"] for g in groups
    )
    fraction_groups = dpr.fraction_groups(data_runs, group_results)
    several_data = len(fraction_groups) > 1
    for g in fraction_groups:
        head = f"data pruning, {g['dataset']} / {g['model']}: {len(g['runs'])} runs\n"
        table = "\n\n".join(t for t in (table, head + g["table"]) if t)
    notes = skipped_lines(skipped)
    if notes:
        table += "\n" + "\n".join(notes)
    md = [
        f"# prunekit report\n\n{len(everything)} runs under `{directory}`, one table per data set "
        "and model; accuracy = the metric named in each table (mean and sample std over seeds); "
        "MACs per example (ShrinkBench definitions); MACs speedup = dense / non-zero MACs "
        "(theoretical).\n"
        + (
            f"\nMeasured latency: {latency.describe()}; the final model runs sparse kernels only "
            "in layers where they were measured faster.\n"
            if latency is not None
            else ""
        )
    ]
    for g in groups:
        md.append(f"\n## {g['dataset']} / {g['model']} ({len(g['runs'])} runs)\n\n")
        md.append(markdown_table(g["rows"], g["metric"]))
    for g in fraction_groups:
        md.append(f"\n## Data pruning: accuracy vs kept fraction, {g['dataset']} / {g['model']} "
                  f"({len(g['runs'])} runs)\n\n")  # fmt: skip
        md.append(dpr.fraction_table(g["rows"], g["metric"], markdown=True))
    md.extend(f"\n{line}\n" for line in notes)
    files = {}
    csv_parts = [_group_csv(g, header=i == 0) for i, g in enumerate(groups)]
    texts = [("report.md", "".join(md)), ("report.csv", "".join(csv_parts))]
    if fraction_groups:
        texts.append(("report_data_pruning.csv", dpr.fraction_groups_csv(fraction_groups)))
    for name, text in texts:
        write_text_atomic(text, target / name)
        files[name] = str(target / name)
    if plots:
        from prunekit.experiments.plots import plot_accuracy, plot_layer_sparsity

        for g in groups:
            suffix = f"_{_slug((g['dataset'], g['model']))}" if several else ""
            path = plot_accuracy(
                g["rows"], target / f"accuracy_vs_sparsity{suffix}.png", g["metric"],
                title=f"{g['dataset']} / {g['model']}",
            )  # fmt: skip
            files[path.name] = str(path)
            for path in plot_layer_sparsity(g["runs"], target, suffix=suffix):
                files[path.name] = str(path)
        for g in fraction_groups:
            suffix = f"_{_slug((g['dataset'], g['model']))}" if several_data else ""
            path = dpr.plot_fractions(
                g["rows"], target / f"accuracy_vs_kept_fraction{suffix}.png", g["metric"]
            )
            files[path.name] = str(path)
    return {
        "groups": groups,
        "rows": [row for g in groups for row in g["rows"]],
        "table": table,
        "files": files,
        "runs": everything,
        "metric": (groups or fraction_groups)[0]["metric"],
        "skipped": skipped,
        "fraction_groups": fraction_groups,
        "fraction_rows": [row for g in fraction_groups for row in g["rows"]],
    }


def skipped_lines(skipped: list[tuple[str, str]]) -> list[str]:
    """One warning line per run left out of a report because its result.json is unreadable."""
    return [
        f"warning: skipped run {str(Path(path).parent)!r}: unreadable result.json ({reason})"
        for path, reason in skipped
    ]


def _group_csv(group: dict[str, Any], header: bool) -> str:
    """The group's CSV lines with ``dataset`` and ``model`` columns in front."""
    lines = csv_text(group["rows"], group["metric"]).splitlines(keepends=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    first = next(csv.reader([lines[0]]))
    # one header for the file: the metric columns are named generically when groups differ
    if header:
        writer.writerow(["dataset", "model", *first, "metric"])
    for line in lines[1:]:
        writer.writerow([group["dataset"], group["model"], *next(csv.reader([line])),
                         group["metric"]])  # fmt: skip
    return buf.getvalue()
