"""``prunekit list`` is complete by construction; ``prunekit report`` never compares unlike runs."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.commands.list_cmd import CATEGORIES, registries
from prunekit.experiments import plots
from prunekit.experiments.config import accepted_names
from prunekit.experiments.report import write_report


def test_list_shows_every_name_the_validator_accepts(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    accepted = accepted_names()
    for key, values in accepted.items():
        missing = [v for v in values if v not in names]
        assert not missing, f"{key}: {missing} missing from 'prunekit list'"
    assert {"N:M", "wanda", "sparsegpt", "owl"} <= names
    for schedule in ("one_shot", "imp", "bimp", "gmp", "rigl", "granet", "at_init", "soups",
                     "sfw", "sap"):  # fmt: skip
        assert schedule in accepted["prune.schedule"]
    # the structured criteria come from their own registry
    from prunekit.structured.criteria import STRUCTURED_CRITERIA

    assert set(registries()["structured criteria"]) == set(STRUCTURED_CRITERIA.names())
    # descriptions are plain text
    assert "``" not in out and not re.search(r":(class|func|meth|mod):`", out)


def test_list_one_category_and_unknown(capsys):
    assert main(["list", "llm-methods"]) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("llm methods") and "prunekit.llm.prune_llm" in out
    assert "criteria\n" not in out
    assert main(["list", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "prunekit list: error: unknown category 'foo'; valid: " + ", ".join(CATEGORIES)
    )


def test_prune_with_an_llm_method_points_to_prunekit_llm():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    before = model[0].weight.detach().clone()
    for method in ("wanda", "sparsegpt", "owl"):
        with pytest.raises(ValueError, match=rf"method: '{method}' is a layer-wise LLM pruning "
                                             r"method: use prunekit.llm.prune_llm"):  # fmt: skip
            prunekit.prune(model, 0.5, method=method)
    assert torch.equal(model[0].weight, before)


def _fake_run(root, name, dataset, model, method, sparsity, acc, layers, seed=0):
    run = root / "runs" / name
    run.mkdir(parents=True)
    result = {
        "name": name, "method": method, "config_hash": name, "seed": seed,
        "target_sparsity": sparsity, "sparsity": sparsity,
        "dense": {"test_top1": 0.9}, "final": {"test_top1": acc},
        "costs": {"params": 100, "nonzeros": 50, "dense_macs": 100, "nonzero_macs": 50,
                  "speedup": 2.0, "compression": 2.0,
                  "layers": [{"name": n.removesuffix(".weight")} for n in layers]},
        "layer_sparsity": layers, "run_dir": str(run),
    }  # fmt: skip
    if dataset is not None:
        result.update(dataset=dataset, model=model)
    else:  # an older run: the groups come from its config
        (run / "config.yaml").write_text(f"model: {{name: {model}}}\ndata: {{name: {model}x}}\n")
    (run / "result.json").write_text(json.dumps(result))


def test_report_groups_by_dataset_and_model(tmp_path, monkeypatch):
    mlp = {"net.0.weight": 0.5, "net.2.weight": 0.5}
    cnn = {"conv.weight": 0.3, "fc.weight": 0.7}
    _fake_run(tmp_path, "a", "digits", "mlp", "magnitude", 0.5, 0.8, mlp)
    _fake_run(tmp_path, "b", "digits", "mlp", "lamp", 0.5, 0.7, mlp)
    _fake_run(tmp_path, "c", "mnist1d", "cnn1d", "magnitude", 0.5, 0.6, cnn)
    _fake_run(tmp_path, "d", None, "lenet5", "magnitude", 0.5, 0.5, cnn)
    drawn = []

    def save(fig, path):
        for ax in fig.axes:
            handles, labels = ax.get_legend_handles_labels()
            bars = {c.get_label(): len(getattr(c, "patches", [])) for c in ax.containers}
            drawn.append((path.name, labels, bars))
        path.write_bytes(b"\x89PNG")
        return path

    monkeypatch.setattr(plots, "_save", save)
    report = write_report(tmp_path, tmp_path / "rep")
    keys = [(g["dataset"], g["model"]) for g in report["groups"]]
    assert keys == [("digits", "mlp"), ("lenet5x", "lenet5"), ("mnist1d", "cnn1d")]
    digits = report["groups"][0]
    assert [r.method for r in digits["rows"]] == ["dense", "lamp", "magnitude"]
    assert [r.method for r in report["groups"][2]["rows"]] == ["dense", "magnitude"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("\n## ") == 3 and "## digits / mlp (2 runs)" in md
    with open(tmp_path / "rep" / "report.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert [(x["dataset"], x["model"], x["method"]) for x in lines] == [
        ("digits", "mlp", "dense"), ("digits", "mlp", "lamp"), ("digits", "mlp", "magnitude"),
        ("lenet5x", "lenet5", "dense"), ("lenet5x", "lenet5", "magnitude"),
        ("mnist1d", "cnn1d", "dense"), ("mnist1d", "cnn1d", "magnitude"),
    ]  # fmt: skip
    names = {name for name, _, _ in drawn}
    assert {"accuracy_vs_sparsity_digits_mlp.png", "layer_sparsity_50_digits_mlp.png",
            "layer_sparsity_50_mnist1d_cnn1d.png"} <= names  # fmt: skip
    for name, labels, bars in drawn:
        if name.startswith("layer_sparsity"):
            # every legend entry has bars
            assert labels and all(bars.get(label, 0) > 0 for label in labels), (name, bars)
    layer_mlp = next(b for n, _, b in drawn if n == "layer_sparsity_50_digits_mlp.png")
    assert layer_mlp == {"lamp": 2, "magnitude": 2}


def test_layer_plot_skips_methods_without_bars(tmp_path, monkeypatch):
    drawn = []

    def save(fig, path):
        drawn.append(fig.axes[0].get_legend_handles_labels()[1])
        return path

    monkeypatch.setattr(plots, "_save", save)
    runs = [
        {"method": "a", "target_sparsity": 0.5, "layer_sparsity": {"x.weight": 0.5},
         "costs": {"layers": [{"name": "x"}]}},
        {"method": "b", "target_sparsity": 0.5, "layer_sparsity": {"other.weight": 0.5}},
    ]  # fmt: skip
    plots.plot_layer_sparsity(runs, tmp_path)
    assert drawn == [["a"]]
