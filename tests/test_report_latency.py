"""`prunekit report --latency`: measured columns next to the theoretical MACs ratio."""

from __future__ import annotations

import csv
import math

import pytest

from prunekit.cli import main
from prunekit.experiments.config import resolve
from prunekit.experiments.runner import run_experiment

TINY = {
    "name": "t",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1},
    "prune": {"sparsity": 0.7, "allocation": "lamp"},
    "retrain": {"epochs": 0.5},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency") / "o"
    return out, run_experiment(resolve({**TINY, "output": str(out)}), quiet=True)


def test_report_latency_columns_are_labelled_and_consistent(finished, tmp_path, capsys):
    out, result = finished
    rep = tmp_path / "rep"
    args = ["report", str(out), "--out", str(rep), "--no-plots", "--latency", "--threads", "1"]
    assert main([*args, "--batch-size", "4", "--repeats", "3"]) == 0
    table = capsys.readouterr().out
    assert "MACs speedup (theoretical)" in table and "speedup (measured)" in table
    with open(rep / "report.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert [line["method"] for line in lines] == ["dense", result["method"]]
    for line in lines:
        dense, final = float(line["dense_latency_ms"]), float(line["final_latency_ms"])
        assert dense > 0 and final > 0
        assert float(line["measured_speedup"]) == dense / final
    assert float(lines[1]["theoretical_speedup"]) == result["costs"]["speedup"]
    md = (rep / "report.md").read_text()
    assert "device cpu, 1 thread(s), batch 4" in md
    assert "| dense ms (measured) | final ms (measured) | speedup (measured) |" in md


def test_report_without_latency_has_no_measured_columns(finished, tmp_path, capsys):
    out, _ = finished
    assert main(["report", str(out), "--out", str(tmp_path), "--no-plots"]) == 0
    assert "(measured)" not in capsys.readouterr().out
    with open(tmp_path / "report.csv") as fh:
        line = list(csv.DictReader(fh))[-1]
    assert math.isnan(float(line["measured_speedup"]))


def test_latency_options_without_latency_or_bad_values_exit_2(finished, capsys):
    out, _ = finished
    assert main(["report", str(out), "--no-plots", "--threads", "2"]) == 2
    assert "only apply with --latency" in capsys.readouterr().err
    assert main(["report", str(out), "--no-plots", "--latency", "--batch-size", "0"]) == 2
    assert "batch_size: expected a positive integer" in capsys.readouterr().err
