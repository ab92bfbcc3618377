"""`prunekit sweep`: grid, shared dense models, parallel workers, DB, resume; `prunekit report`."""

from __future__ import annotations

import csv

import yaml

from prunekit.cli import main
from prunekit.experiments.config import load_config
from prunekit.experiments.store import ResultsStore
from prunekit.experiments.sweep import expand


def _sweep_config(tmp_path) -> str:
    data = {
        "name": "grid",
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "digits"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "lr_schedule": "linear"},
        "retrain": {"epochs": 0.5},
        "output": str(tmp_path / "out"),
        "sweep": {
            "sparsities": [0.5, 0.9],
            "seeds": [0, 1],
            "methods": {
                "global": {"prune.allocation": "global"},
                "bimp": {"prune.schedule": "bimp", "prune.phases": 2},
            },
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_sweep_parallel_workers_db_resume_and_report(tmp_path, capsys):
    config = _sweep_config(tmp_path)
    assert main(["sweep", config, "--workers", "2"]) == 0
    out = tmp_path / "out"
    arms = expand(load_config(config))
    assert len(arms) == 8
    # one dense model per seed, shared by all methods (BIMP included: the schedule is linear)
    assert len(list((out / "dense").iterdir())) == 2
    # every arm recorded by the concurrent workers, nothing lost
    rows = ResultsStore(out).runs()
    assert len(rows) == 8 and all(r["status"] == "done" for r in rows)
    assert {(r["name"], r["metrics"]["target_sparsity"], r["metrics"]["seed"]) for r in rows} == {
        (a.method, a.sparsity, a.seed) for a in arms
    }
    printed = capsys.readouterr().out
    assert "0 already finished" in printed

    # a re-run does nothing new
    assert main(["sweep", config, "--workers", "1", "--no-report"]) == 0
    assert "8 already finished" in capsys.readouterr().out
    assert len(ResultsStore(out).runs()) == 8

    # report: every run, mean ± std over the two seeds computed by hand
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    table = capsys.readouterr().out
    for method in ("global", "bimp", "dense"):
        assert method in table
    with open(tmp_path / "rep" / "report.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 1 + 2 * 2  # dense + methods x sparsities
    listed = {run for line in lines for run in line["runs"].split()}
    assert listed == {r["run_dir"] for r in rows}
    by_key = {(r["name"], r["metrics"]["target_sparsity"]): [] for r in rows}
    for r in rows:
        by_key[(r["name"], r["metrics"]["target_sparsity"])].append(r["metrics"]["final_test_top1"])
    for line in lines[1:]:
        accs = by_key[(line["method"], float(line["sparsity"]))]
        mean = sum(accs) / 2
        std = (sum((a - mean) ** 2 for a in accs) / 1) ** 0.5
        assert 0.0 <= float(line["pq_index"]) <= 1.0
        assert abs(float(line["test_top1_mean"]) - mean) < 1e-12
        assert abs(float(line["test_top1_std"]) - std) < 1e-12
        assert (
            abs(
                float(line["theoretical_speedup"])
                - float(line["dense_macs"]) / float(line["nonzero_macs"])
            )
            < 1e-9
        )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("\n| ") >= 5
    for png in ("accuracy_vs_sparsity.png", "layer_sparsity_50.png", "layer_sparsity_90.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
