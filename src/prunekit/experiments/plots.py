"""PNG plots of a report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_accuracy", "plot_layer_sparsity"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from prunekit.core.serialization import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_accuracy(
    rows: list[Any], path: str | Path, metric: str = "test_top1", *, title: str | None = None
) -> Path:
    """Accuracy vs sparsity, one line per method with error bars (std over seeds); ``rows`` are
    of one (data set, model) group, named in ``title``."""
    heading = f"{title}: accuracy vs sparsity" if title else "accuracy vs sparsity"
    return plot_lines(rows, path, metric, x="sparsity", xlabel="sparsity (%)", title=heading)


def plot_lines(
    rows: list[Any],
    path: str | Path,
    metric: str,
    *,
    x: str,
    xlabel: str,
    title: str,
    dense_label: str = "dense",
) -> Path:
    """Accuracy against the fraction ``row.<x>`` (shown in %), one line per method with error
    bars (std over seeds); a ``dense`` row is drawn as a horizontal reference line."""
    plt = _pyplot()
    scale = 100.0 if metric.endswith("top1") else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods: dict[str, list[Any]] = {}
    for row in rows:
        methods.setdefault(row.method, []).append(row)
    for method, items in methods.items():
        if method == "dense":
            acc = items[0].accuracy * scale
            ax.axhline(
                acc, color="gray", linestyle="--", linewidth=1, label=f"{dense_label} ({acc:.2f})"
            )
            continue
        items.sort(key=lambda r: getattr(r, x))
        ax.errorbar(
            [getattr(r, x) * 100 for r in items],
            [r.accuracy * scale for r in items],
            yerr=[r.std * scale for r in items],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 accuracy (%)" if metric.endswith("top1") else metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = _save(fig, Path(path))
    plt.close(fig)
    return path


def plot_layer_sparsity(
    results: list[dict[str, Any]], directory: str | Path, *, suffix: str = ""
) -> list[Path]:
    """Per-layer sparsity bars, one PNG per target sparsity, one bar group per method (seed 0 or
    the first seed found). ``results`` are runs of one model; a method only gets a legend entry
    when it has bars (layers of that model)."""
    plt = _pyplot()
    by_sparsity: dict[float, dict[str, dict[str, float]]] = {}
    order: list[str] = []
    for r in sorted(results, key=lambda r: r.get("seed", 0)):
        layers = r.get("layer_sparsity")
        if not layers:
            continue
        if not order:  # model order, from the cost rows (layer name + ".weight")
            rows = [f"{row['name']}.weight" for row in r.get("costs", {}).get("layers", [])]
            order = [n for n in rows if n in layers]
        s = round(float(r.get("target_sparsity", r.get("sparsity", 0))), 6)
        by_sparsity.setdefault(s, {}).setdefault(str(r["method"]), layers)
    paths = []
    for s, methods in sorted(by_sparsity.items()):
        first = next(iter(methods.values()))
        names = order + [n for n in first if n not in order]
        # a method without any of these layers would be a legend entry with no bars
        methods = {m: layers for m, layers in methods.items() if any(n in layers for n in names)}
        width = 0.8 / max(len(methods), 1)
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) * max(1, len(methods) / 2)), 4))
        for i, (method, layers) in enumerate(sorted(methods.items())):
            xs = [k + i * width for k in range(len(names))]
            present = [(x, n) for x, n in zip(xs, names) if n in layers]
            ax.bar([x for x, _ in present], [100 * layers[n] for _, n in present], width=width,
                   label=method)  # fmt: skip
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))])
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("layer sparsity (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"per-layer sparsity at {s:.0%} overall")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        name = f"layer_sparsity_{round(s * 100):02d}{suffix}.png"
        paths.append(_save(fig, Path(directory) / name))
        plt.close(fig)
    return paths
