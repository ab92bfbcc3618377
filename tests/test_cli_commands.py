"""Each command on a tiny config: run, --dry-run, demo --small, report errors, --help examples."""

from __future__ import annotations

import csv
import sys
import types

import pytest
import yaml

from prunekit.cli import build_parser, main
from prunekit.experiments.config import resolve
from prunekit.experiments.runner import run_experiment
from prunekit.experiments.typed import ConfigError

TINY = {
    "name": "t",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1},
    "prune": {"sparsity": 0.7, "allocation": "lamp"},
    "retrain": {"epochs": 0.5},
}


def _write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "command", ["demo", "run", "sweep", "report", "list", "prune-llm", "export"]
)
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert "example" in text and f"prunekit {command}" in text


def test_run_command_and_overrides(tmp_path, capsys):
    config = _write(tmp_path, {**TINY, "output": str(tmp_path / "o")})
    assert (
        main(["run", config, "--set", "prune.sparsity=0.6", "--set", "prune.allocation=global"])
        == 0
    )
    out = capsys.readouterr().out
    assert "sparsity 0.5997" in out and "outputs:" in out  # round(0.6 * 1184) = 710 pruned


def test_dry_run_prints_config_and_plan_without_training(tmp_path, capsys):
    config = _write(tmp_path, {**TINY, "output": str(tmp_path / "o")})
    assert main(["run", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "allocation: lamp" in out
    assert "net.1.weight" in out and "net.3.weight" in out
    total = [line for line in out.splitlines() if line.startswith("total")][0].split()
    assert int(total[2]) == round(0.7 * int(total[1]))
    assert not (tmp_path / "o").exists()


def test_config_error_names_key_and_nothing_runs(tmp_path, capsys):
    bad = {**TINY, "prune": {"sparsity": 0.5, "alocation": "lamp"}, "output": str(tmp_path / "o")}
    assert main(["run", _write(tmp_path, bad)]) == 2
    err = capsys.readouterr().err
    assert "prune.alocation: unknown key" in err and "allocation" in err
    assert main(["run", _write(tmp_path, {**TINY, "output": str(tmp_path / "o")}),
                 "--set", "retrain.schedule=cosine"]) == 2  # fmt: skip
    assert "retrain.schedule: unknown schedule 'cosine'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_report_of_empty_directory_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_demo_small_finishes_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--small", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    for method in ("global_magnitude", "uniform_magnitude", "lamp", "bimp"):
        assert method in text
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    assert "outputs in" in text and str(out / "report.md") in text
    # A smoke demo that still learns: >= 80 % dense, and the plot is not flat.
    with open(out / "report.csv", newline="") as handle:
        accuracy = {(r["method"], r["sparsity"]): float(r["test_top1_mean"])
                    for r in csv.DictReader(handle)}  # fmt: skip
    assert [v for (method, _), v in accuracy.items() if method == "dense"][0] >= 0.80
    assert len(set(accuracy.values())) > 2


def test_missing_tracker_is_a_clear_error_before_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable
    cfg = resolve({**TINY, "tracker": "wandb", "output": str(tmp_path / "o")})
    with pytest.raises(ConfigError, match="tracker: 'wandb' was asked for but is not installed"):
        run_experiment(cfg, quiet=True)
    assert not (tmp_path / "o" / "runs").exists()


def test_mlflow_tracker_logs_params_metrics_and_files(tmp_path, monkeypatch):
    calls: dict[str, list] = {"params": [], "metrics": [], "artifacts": [], "uri": []}

    class _Run:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.SimpleNamespace(
        set_tracking_uri=lambda uri: calls["uri"].append(uri),
        set_experiment=lambda name: None,
        start_run=lambda run_name=None: _Run(),
        log_params=lambda p: calls["params"].append(p),
        log_metrics=lambda m: calls["metrics"].append(m),
        log_artifact=lambda path: calls["artifacts"].append(path),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve({**TINY, "tracker": "mlflow", "output": str(tmp_path / "o")})
    result = run_experiment(cfg, quiet=True)
    assert calls["uri"][0].startswith("file:") and calls["uri"][0].endswith("/o/mlruns")
    assert calls["params"][0]["prune.allocation"] == "lamp"
    assert calls["metrics"][0]["final.test_top1"] == result["final"]["test_top1"]
    assert any(p.endswith("result.json") for p in calls["artifacts"])
    assert any(p.endswith("layer_sparsity_70.png") for p in calls["artifacts"])


def test_wandb_tracker_offline(tmp_path, monkeypatch):
    logged: dict[str, list] = {"init": [], "log": [], "finish": []}

    class _Run:
        def log(self, data):
            logged["log"].append(data)

        def finish(self):
            logged["finish"].append(True)

    def init(**kwargs):
        logged["init"].append(kwargs)
        return _Run()

    fake = types.SimpleNamespace(init=init, Image=lambda path: path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = resolve({**TINY, "tracker": "wandb", "output": str(tmp_path / "o")})
    result = run_experiment(cfg, quiet=True)
    assert logged["init"][0]["mode"] == "offline"
    assert logged["init"][0]["config"]["prune.sparsity"] == 0.7
    assert logged["log"][0]["final.test_top1"] == result["final"]["test_top1"]
    assert logged["finish"] == [True]
    assert any("layer_sparsity_70" in entry for entry in logged["log"][1:])
