"""The user's own model and data in a config: factories, a local HF folder, dense checkpoints,
and the trust rule (a module:function is imported only for the user's own config)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prunekit
from prunekit.cli import main
from prunekit.data import DatasetBundle
from prunekit.data.base import TensorData, to_tensor_data
from prunekit.experiments.config import load_config, resolve
from prunekit.experiments.runner import build_data, build_model, run_dir, run_experiment
from prunekit.experiments.sources import ImportNotAllowedError, resolve_callable
from prunekit.experiments.typed import ConfigError, to_dict
from prunekit.export import load_compressed

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model"

USER_MODULE = """
import torch
from torch import nn
from prunekit.data import DatasetBundle

CALLS = []

def build_model(in_features, num_classes, hidden=8):
    CALLS.append("model")
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

def build_data(n=96, features=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    pairs = [(x[i], int(x[i, 0] > 0)) for i in range(n)]
    return DatasetBundle.from_datasets(pairs[: n // 2], pairs[n // 2 :], name="halves",
                                       val_fraction=0.25)

def not_a_bundle():
    return [1, 2, 3]
"""

TINY = {
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "threads": 1},
    "retrain": {"epochs": 0.5},
    "prune": {"sparsity": 0.5},
}


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    """A user's module ``userpkg_models`` in a folder beside the config."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "userpkg_models.py").write_text(USER_MODULE)
    yield folder
    sys.modules.pop("userpkg_models", None)


def _config(folder: Path, tmp_path: Path, **extra) -> Path:
    import yaml

    data = {
        "name": "mine",
        "model": {"factory": "userpkg_models:build_model", "kwargs": {"hidden": 8}},
        "data": {"factory": "userpkg_models:build_data", "calibration_batch_size": 16},
        "output": str(tmp_path / "out"),
        **TINY,
        **extra,
    }
    path = folder / "my.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_factory_model_and_data_run_and_record_the_resolved_spec(user_pkg, tmp_path):
    path = _config(user_pkg, tmp_path)
    assert main(["run", str(path), "--quiet"]) == 0
    cfg = load_config(path, allow_import=True)
    assert (cfg.model.name, cfg.data.name) == ("build_model", "build_data")  # labels
    root = run_dir(cfg)
    spec = json.loads((root / "model_spec.json").read_text())
    # data-dependent kwargs recorded: in_features and num_classes came from the data set
    assert spec == {
        "kind": "factory",
        "factory": "userpkg_models:build_model",
        "kwargs": {"hidden": 8, "in_features": 6, "num_classes": 2},
    }
    result = json.loads((root / "result.json").read_text())
    assert (result["dataset"], result["model"]) == ("build_data", "build_model")
    # a run folder is data: reloading never imports the factory on the file's say-so
    sys.modules.pop("userpkg_models", None)
    with pytest.raises(ImportNotAllowedError, match="model.factory: 'userpkg_models:build_model'"):
        prunekit.load_run(root)
    assert "userpkg_models" not in sys.modules
    # the caller may pass the factory itself, or allow its package
    sys.path.insert(0, str(user_pkg))
    try:
        import userpkg_models

        by_factory = prunekit.load_run(root, factory=userpkg_models.build_model)
        by_allow = prunekit.load_run(root, allow_import=["userpkg_models"])
    finally:
        sys.path.remove(str(user_pkg))
    assert by_factory.matches_reference() and by_allow.matches_reference()
    assert by_factory.masks.sparsity == pytest.approx(0.5, abs=0.02)


def test_config_from_a_run_dir_never_imports(user_pkg, tmp_path):
    path = _config(user_pkg, tmp_path)
    import yaml

    data = yaml.safe_load(path.read_text())
    cfg = resolve(data, source_dir=str(user_pkg))  # allow_import defaults to False
    with pytest.raises(ImportNotAllowedError, match="data.factory"):
        build_data(cfg)
    assert "userpkg_models" not in sys.modules
    # a re-resolved config (sweep workers) keeps the permission only when it is passed on
    allowed = load_config(path, allow_import=True)
    assert resolve(to_dict(allowed)).allow_import is False
    bundle = build_data(allowed)
    assert isinstance(build_model(allowed, bundle), torch.nn.Sequential)


def test_resolve_callable_rules(user_pkg):
    with pytest.raises(ConfigError, match="expected 'package.module:function'"):
        resolve_callable("os.system", key="model.factory", allow_import=True)
    with pytest.raises(ImportNotAllowedError, match="--allow-import os"):
        resolve_callable("os:system", key="model.factory", allow_import=["mypkg"])
    with pytest.raises(ImportNotAllowedError):
        resolve_callable("os:system", key="model.factory", allow_import="os")  # not a list
    with pytest.raises(ImportNotAllowedError):  # a prefix admits submodules, not look-alikes
        resolve_callable("ossy:f", key="model.factory", allow_import=["os"])
    assert (
        resolve_callable("os.path:join", key="k", allow_import=["os"]) is __import__("os").path.join
    )
    with pytest.raises(ConfigError, match="names a private attribute"):
        resolve_callable("os:_exit", key="model.factory", allow_import=True)
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg_x'"):
        resolve_callable("no_such_pkg_x:f", key="model.factory", allow_import=True)
    fn = resolve_callable(
        "userpkg_models:not_a_bundle", key="data.factory", allow_import=["userpkg_models"],
        search_path=str(user_pkg),
    )  # fmt: skip
    assert fn() == [1, 2, 3]
    assert str(user_pkg) not in sys.path  # the search path is not left behind


def test_data_factory_must_return_a_bundle(user_pkg, tmp_path):
    path = _config(user_pkg, tmp_path, data={"factory": "userpkg_models:not_a_bundle"})
    assert main(["run", str(path), "--quiet"]) == 2
    with pytest.raises(
        TypeError, match="data.factory: 'userpkg_models:not_a_bundle' returned list"
    ):
        build_data(load_config(path, allow_import=True))


def test_bad_model_sections_fail_at_load(tmp_path):
    for section, message in (
        ({"factory": "a:b", "hf": "x"}, "model.factory: give either factory or hf"),
        ({"hf": "x"}, "model.class: hf needs the transformers class"),
        ({"hf": "x", "class": "os.system"}, "model.class: expected a transformers class name"),
        ({"name": "mlp", "class": "BertModel"}, "model.class: only used with hf"),
        ({"factory": "not a spec"}, "model.factory: expected 'package.module:function'"),
    ):
        with pytest.raises(ConfigError) as err:
            resolve({"model": section})
        assert str(err.value).startswith(message), (section, str(err.value))


def test_from_datasets_stacks_map_style_pairs():
    train = [(torch.full((2, 3), float(i)), i % 3) for i in range(10)]
    test = [(torch.zeros(2, 3), 1), (torch.ones(2, 3), 2)]
    bundle = DatasetBundle.from_datasets(train, test, name="toy", val_fraction=0.2, seed=1)
    assert bundle.input_shape == (2, 3) and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 2, 2)
    assert bundle.train.y.dtype == torch.long
    # every training example kept its own label
    for x, y in zip(bundle.train.x, bundle.train.y):
        assert int(x[0, 0]) % 3 == int(y)
    no_val = DatasetBundle.from_datasets(train, test)
    assert len(no_val.val) == 0 and len(no_val.train) == 10
    with pytest.raises(TypeError, match=r"train\[0\]: expected an \(x, y\) pair"):
        DatasetBundle.from_datasets([torch.zeros(3)], test)
    with pytest.raises(TypeError, match="test: targets must be integers"):
        DatasetBundle.from_datasets(train, [(torch.zeros(2, 3), 0.5)])
    with pytest.raises(TypeError, match="dataset: expected a map-style dataset"):
        to_tensor_data(iter(train))
    assert isinstance(to_tensor_data(bundle.test), TensorData)


def test_dense_checkpoint_pt_and_mismatch(user_pkg, tmp_path):
    path = _config(user_pkg, tmp_path)
    cfg = load_config(path, allow_import=True)
    model = build_model(cfg, build_data(cfg))
    torch.manual_seed(3)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    pt = tmp_path / "mine.pt"
    torch.save({"state_dict": model.state_dict()}, pt)
    ck = load_config(path, [("dense_checkpoint", str(pt))], allow_import=True)
    result = run_experiment(ck, quiet=True)
    assert result["iterations"]["dense"] == 0
    dense = load_file(str(Path(result["dense_dir"]) / "model.safetensors"))
    assert all(torch.equal(dense[k], v) for k, v in model.state_dict().items())
    # the file's contents are part of the hash: new weights in the same file, a new run
    pt.write_bytes(pt.read_bytes())
    assert run_dir(load_config(path, [("dense_checkpoint", str(pt))])) == run_dir(ck)
    torch.save({"0.weight": torch.zeros(3, 3)}, pt)
    other = load_config(path, [("dense_checkpoint", str(pt))], allow_import=True)
    assert run_dir(other) != run_dir(ck)
    with pytest.raises(ValueError, match=r"mine.pt: does not fit the model: tensor '0.bias'"):
        run_experiment(other, quiet=True)


def test_hf_folder_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "bert-tiny"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    project = tmp_path / "project"
    project.mkdir()
    (project / "tokdata.py").write_text(
        "import torch\nfrom prunekit.data import DatasetBundle, TensorData\n"
        "def build():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randint(1, 50, (64, 8), generator=g)\n"
        "    d = TensorData(x, (x[:, 0] > 25).long())\n"
        "    return DatasetBundle('tok', d.subset(torch.arange(48)), d.subset(torch.arange(0)),\n"
        "                         d.subset(torch.arange(48, 64)), 2, (8,))\n"
    )
    cfg_path = project / "hf.yaml"
    cfg_path.write_text(
        f"name: hf\nmodel: {{hf: {folder}, class: AutoModelForSequenceClassification}}\n"
        "data: {factory: 'tokdata:build', calibration_batch_size: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 0.01, optimizer: adam, threads: 1}\n"
        "prune: {sparsity: 0.5, targets: {module_types: [Linear]}}\nretrain: {epochs: 0.5}\n"
        f"output: {tmp_path / 'out'}\n"
    )
    try:
        assert main(["run", str(cfg_path), "--quiet"]) == 0
    finally:
        sys.modules.pop("tokdata", None)
    root = run_dir(load_config(cfg_path))
    spec = json.loads((root / "model_spec.json").read_text())
    assert spec["kind"] == "hf" and spec["kwargs"] == {"num_labels": 2}
    shutil.rmtree(folder)  # the run does not need the source folder any more
    run = prunekit.load_run(root)
    assert run.matches_reference()
    out = tmp_path / "exported"
    assert main(["export", str(root), "--format", "hf", "--out", str(out)]) == 0
    again = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    x = run.example_input()
    with torch.no_grad():
        assert torch.equal(again.eval()(x).logits, run.model(x))


def test_own_model_example_end_to_end(tmp_path, monkeypatch):
    """examples/own_model at a tiny size: train.py, prunekit run my.yaml, prunekit export."""
    work = tmp_path / "own_model"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("results", "shipped", "*.pt"))
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    sys.modules.pop("mycnn", None)
    sys.modules.pop("train", None)
    try:
        import train

        train.main(epochs=1, num_samples=200)
        tiny = ["data.kwargs.num_samples=200", "train.epochs=1", "retrain.epochs=1"]
        args = [a for s in tiny for a in ("--set", s)]
        assert main(["run", "my.yaml", "--quiet", *args]) == 0
        (root,) = (work / "results" / "runs").iterdir()
        assert main(["export", str(root), "--format", "compressed", "--out", "shipped"]) == 2
        assert main(["export", str(root), "--format", "compressed", "--out", "shipped",
                     "--allow-import", "mycnn"]) == 0  # fmt: skip
        import mycnn

        shipped = load_compressed(work / "shipped" / "model.compressed.safetensors")
        model = mycnn.build_model(**json.loads((work / "shipped" / "model_spec.json").read_text())[
            "kwargs"])  # fmt: skip
        model.load_state_dict(shipped)
        run = prunekit.load_run(root, factory=mycnn.build_model)
        x = run.example_input()
        with torch.no_grad():
            assert torch.equal(model.eval()(x), run.model(x))
        assert run.matches_reference()
        assert run.masks.sparsity == pytest.approx(0.8, abs=0.01)
        assert run.metrics["dense"]["test_top1"] > 0  # evaluated the user's trained weights
        assert (run.metrics["dataset"], run.metrics["model"]) == ("stripes", "my_cnn")
    finally:
        sys.modules.pop("mycnn", None)
        sys.modules.pop("train", None)


def test_source_errors_before_anything_is_created(user_pkg, tmp_path, capsys):
    out = tmp_path / "out"
    for extra, message in (
        ({"model": {"factory": "userpkg_models:nope"}}, "model.factory: module 'userpkg_models' "
                                                        "has no attribute 'nope'"),
        ({"data": {"factory": "no_such_mod_y:build"}}, "data.factory: cannot import"),
        ({"dense_checkpoint": str(tmp_path / "missing.pt")}, "dense_checkpoint: no such file"),
        ({"model": {"hf": str(tmp_path / "nothing"), "class": "AutoModel"}}, "model.hf: no such"),
    ):  # fmt: skip
        path = _config(user_pkg, tmp_path, **extra)
        for dry in (["--dry-run"], []):
            assert main(["run", str(path), *dry]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"prunekit run: error: {message}"), err
        assert not out.exists()


def test_sweep_arms_keep_the_import_permission(user_pkg, tmp_path):
    from prunekit.experiments.sweep import expand

    path = _config(user_pkg, tmp_path, sweep={"sparsities": [0.5, 0.75], "seeds": [0, 1]})
    arms = expand(load_config(path, allow_import=True))
    assert len(arms) == 4
    assert all(a.config.allow_import and a.config.source_dir == str(user_pkg) for a in arms)
    assert not any(a.config.allow_import for a in expand(load_config(path)))


def test_a_config_inside_a_run_dir_never_imports(user_pkg, tmp_path, capsys):
    path = _config(user_pkg, tmp_path)
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    root = run_dir(load_config(path))
    saved = root / "config.yaml"
    # the saved config names the factory; the module sits beside it as an attacker would put it
    shutil.copy(user_pkg / "userpkg_models.py", root / "userpkg_models.py")
    sys.modules.pop("userpkg_models", None)
    assert main(["run", str(saved), "--dry-run"]) == 2
    assert (
        "model.factory: 'userpkg_models:build_model' names Python code" in capsys.readouterr().err
    )
    assert "userpkg_models" not in sys.modules
