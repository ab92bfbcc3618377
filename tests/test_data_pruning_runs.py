"""Data pruning in the config, `prunekit run` (resume included), `prunekit sweep`, report, list."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from prunekit.cli import main
from prunekit.core.serialization import load_safetensors
from prunekit.data_pruning import load_scores, select
from prunekit.experiments.config import hashed_dict, load_config, resolve
from prunekit.experiments.runner import run_dir, run_experiment

BASE = {
    "name": "dp",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1, "checkpoint_every": 3},
    "data_prune": {"score": "el2n", "fraction": 0.3, "keep": "easy",
                   "options": {"runs": 1, "epochs": 0.5}},
}  # fmt: skip


def _write(tmp_path, data, name="c.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data_prune.score=nope", "data_prune.score: unknown data score 'nope'; allowed: el2n"),
        ("data_prune.fraction=0", "data_prune.fraction: expected a number in (0, 1]"),
        ("data_prune.keep=middle", "data_prune.keep: expected one of 'hard', 'easy', 'auto'"),
        ("data_prune.kd.alpha=2", "data_prune.kd.alpha: expected a number in [0, 1]"),
        ("data_prune.options.bogus=1", "data_prune.options.bogus: unknown option of data score"),
        ("data_prune.budget=steps", "data_prune.budget: expected one of 'epochs', 'iterations'"),
        ("prune.schedule=gmp", "data_prune: a data-pruning run trains on the kept subset"),
        ("sweep.scores=[el2n, foo]", "sweep.scores[1]: unknown data score 'foo'"),
        ("sweep={fractions: [0.5], sparsities: [0.9]}", "sweep.sparsities: a data-pruning sweep"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, override, message):
    config = _write(tmp_path, {**BASE, "output": str(tmp_path / "o")})
    assert main(["run", config, "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_configs_without_data_pruning_keep_their_hash():
    cfg = resolve({"name": "x"})
    assert "data_prune" not in hashed_dict(cfg)
    assert "data_prune" in hashed_dict(resolve({"data_prune": {"score": "random"}}))


def test_cli_run_saves_the_selection_and_reuses_scores(tmp_path, capsys):
    out = tmp_path / "o"
    config = _write(tmp_path, {**BASE, "output": str(out)})
    assert main(["run", config, "--quiet"]) == 0
    assert "el2n-easy: kept 377 of 1258 examples, test_top1=" in capsys.readouterr().out
    cfg = load_config(config)
    result = json.loads((run_dir(cfg) / "result.json").read_text())
    dp = result["data_prune"]
    assert (dp["kept"], dp["num_examples"], dp["rule"], dp["kd"]) == (377, 1258, "easy", None)
    assert dp["iterations"] == 6 and result["iterations"]["dense"] == 20  # equal epochs
    indices, meta = load_safetensors(dp["selection_file"])
    scores, _ = load_scores(dp["scores_file"], fingerprint=meta["fingerprint"])
    assert torch.equal(indices["indices"], select(scores, 0.3, "easy").indices)
    assert set(result["final"]) >= {"test_top1", "val_top1"}
    # a second fraction with KD and an equal-iteration budget reuses the scores file
    sets = ["data_prune.fraction=0.7", "data_prune.kd.alpha=0.5", "data_prune.keep=auto",
            "data_prune.budget=iterations"]  # fmt: skip
    assert main(["run", config, "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    second = load_config(config, sets)
    r2 = json.loads((run_dir(second) / "result.json").read_text())["data_prune"]
    assert r2["scores_reused"] and r2["scores_file"] == dp["scores_file"]
    assert r2["rule"] == "hard" and r2["kd"] == {"alpha": 0.5, "tau": 4.0, "teacher": "dense"}
    assert r2["iterations"] == 20 and r2["kept"] == 881


def test_interrupted_data_pruning_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    from prunekit.training.trainer import Trainer

    data = {**BASE, "data_prune": {**BASE["data_prune"], "score": "forgetting", "fraction": 0.8,
                                   "kd": {"alpha": 0.5, "tau": 2.0}, "budget": "iterations",
                                   "options": {"epochs": 1}}}  # fmt: skip
    whole = resolve({**data, "output": str(tmp_path / "whole")})
    expected = run_experiment(whole, quiet=True)

    cfg = resolve({**data, "output": str(tmp_path / "cut")})
    real_save = Trainer.save

    def save_then_die(self, path=None):
        target = real_save(self, path)
        if "data_prune" in str(self.checkpoint_dir) and self.iteration >= 6:
            raise KeyboardInterrupt("killed")
        return target

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, quiet=True)
    root = run_dir(cfg)
    assert not (root / "result.json").exists()
    assert (root / "data_prune" / "ckpt").is_dir() and (
        root / "data_prune" / "selection.safetensors"
    ).is_file()
    monkeypatch.setattr(Trainer, "save", real_save)
    resumed = run_experiment(cfg, quiet=True)
    assert resumed["final"] == expected["final"]
    assert resumed["data_prune"]["kept"] == expected["data_prune"]["kept"] == 1006
    a = load_safetensors(root / "data_prune" / "model.safetensors")[0]
    b = load_safetensors(run_dir(whole) / "data_prune" / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sweep_over_fractions_scores_and_seeds_and_report(tmp_path, capsys):
    data = {**BASE, "output": str(tmp_path / "o"), "data_prune": {"keep": "hard"},
            "sweep": {"fractions": [0.3, 0.7], "scores": ["random", "prototypes"],
                      "seeds": [0, 1]}}  # fmt: skip
    config = _write(tmp_path, data)
    assert main(["sweep", config, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("kept 0.3") == 4 and "8 arms (0 finished, 8 to run)" in listed
    assert main(["sweep", config]) == 0
    out = tmp_path / "o"
    assert len(list((out / "dense").iterdir())) == 2  # one dense model per seed
    assert len(list((out / "data_scores").iterdir())) == 4  # (score, seed), shared by fractions
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Data pruning: accuracy vs kept fraction" in md
    rows = [line for line in md.splitlines() if line.startswith("| prototypes") or
            line.startswith("| random")]  # fmt: skip
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| prototypes", "30%", "2"], ["| prototypes", "70%", "2"],
        ["| random", "30%", "2"], ["| random", "70%", "2"],
    ]  # fmt: skip
    assert (tmp_path / "rep" / "accuracy_vs_kept_fraction.png").stat().st_size > 0
    csv_lines = (tmp_path / "rep" / "report_data_pruning.csv").read_text().splitlines()
    assert len(csv_lines) == 6  # header, dense, 4 cells


def test_list_shows_the_data_scores(capsys):
    assert main(["list", "data scores"]) == 0
    out = capsys.readouterr().out
    for name in ("el2n", "grand", "forgetting", "prototypes", "random"):
        assert f"\n{name} " in out
    assert "[data, no labels]" in out


def test_kd_teacher_from_a_file_and_a_clear_error_when_missing(tmp_path, capsys):
    from prunekit.experiments.runner import dense_dir

    config = _write(tmp_path, {**BASE, "output": str(tmp_path / "o"),
                               "data_prune": {"score": "random", "fraction": 0.5}})  # fmt: skip
    missing = str(tmp_path / "nope.safetensors")
    assert main(["run", config, "--quiet", "--set", "data_prune.kd.alpha=0.5",
                 "--set", f"data_prune.kd.teacher={missing}"]) == 2  # fmt: skip
    assert f"data_prune.kd.teacher: no such file {missing!r}" in capsys.readouterr().err
    teacher = str(dense_dir(load_config(config)) / "model.safetensors")
    sets = ["data_prune.kd.alpha=0.5", f"data_prune.kd.teacher={teacher}"]
    assert main(["run", config, "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    from_file = json.loads((run_dir(load_config(config, sets)) / "result.json").read_text())
    default = run_experiment(load_config(config, sets[:1]), quiet=True)
    assert from_file["data_prune"]["kd"]["teacher"] == teacher
    assert from_file["final"] == default["final"]  # the file holds the dense model


def test_report_puts_the_kept_fraction_table_next_to_the_weight_pruning_one(tmp_path):
    from prunekit.experiments.report import write_report

    def result(name, seed, acc, **extra):
        run = tmp_path / "runs" / f"{name}-{seed}"
        run.mkdir(parents=True)
        data = {"method": name, "seed": seed, "final": {"test_top1": acc},
                "dense": {"test_top1": 0.9}, "iterations": {"dense": 10}, **extra}  # fmt: skip
        (run / "result.json").write_text(json.dumps(data))

    result("magnitude", 0, 0.8, target_sparsity=0.9)
    dp = {"fraction": 0.5, "kept": 50, "num_examples": 100, "iterations": 5}
    result("el2n-hard", 0, 0.6, target_sparsity=0.0, data_prune=dp)
    result("el2n-hard", 1, 0.7, target_sparsity=0.0, data_prune=dp)
    rep = write_report(tmp_path, tmp_path / "rep")
    assert [(r.method, r.sparsity) for r in rep["rows"]] == [("dense", 0.0), ("magnitude", 0.9)]
    [dense, row] = rep["fraction_rows"]
    assert (dense.method, row.method, row.fraction, row.seeds) == (
        "dense",
        "el2n-hard",
        0.5,
        [0, 1],
    )
    assert row.accuracy == pytest.approx(0.65) and row.std == pytest.approx(0.0707107, rel=1e-5)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert (
        "| magnitude | 90.00% |" in md and "| el2n-hard | 50% | 2 | 65.00 | 7.07 | 50 | 5 |" in md
    )
    assert {"accuracy_vs_sparsity.png", "accuracy_vs_kept_fraction.png"} <= set(rep["files"])
