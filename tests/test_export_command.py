"""``prunekit export RUN_DIR --format F --out DIR`` and ``prunekit.load_run``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import prunekit
from prunekit.cli import main
from prunekit.commands.export import FORMATS
from prunekit.experiments.config import resolve
from prunekit.experiments.runner import run_dir, run_experiment
from prunekit.export import load_compressed


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    cfg = resolve(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
            "data": {"name": "digits", "calibration_batch_size": 32},
            "train": {"epochs": 1, "batch_size": 64, "threads": 1},
            "retrain": {"epochs": 0.5},
            "prune": {"sparsity": 0.75},
            "output": str(out),
        }
    )
    torch.set_num_threads(1)
    run_experiment(cfg, quiet=True)
    return run_dir(cfg)


def test_formats_listed():
    assert set(FORMATS) == {"safetensors", "compressed", "hf", "onnx", "torchscript"}


def test_load_run(finished_run):
    run = prunekit.load_run(finished_run)
    assert run.matches_reference()
    assert not run.model.training
    assert run.spec == {"kind": "zoo", "name": "mlp",
                        "kwargs": {"hidden": [8], "in_features": 64, "num_classes": 10}}  # fmt: skip
    assert run.config["model"]["name"] == "mlp"
    assert run.metrics["final"] == json.loads((finished_run / "result.json").read_text())["final"]
    model, masks, metrics = run
    assert (model, masks, metrics) == (run.model, run.masks, run.metrics)
    rng = torch.get_rng_state()
    prunekit.load_run(finished_run)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched


def test_export_state_dict_formats(finished_run, tmp_path):
    run = prunekit.load_run(finished_run)
    state = run.model.state_dict()
    assert main(["export", str(finished_run), "--format", "safetensors", "--out",
                 str(tmp_path / "st")]) == 0  # fmt: skip
    plain = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert plain.keys() == state.keys() and all(torch.equal(plain[k], state[k]) for k in state)
    assert json.loads((tmp_path / "st" / "model_spec.json").read_text()) == run.spec
    assert main(["export", str(finished_run), "--format", "compressed", "--out",
                 str(tmp_path / "c")]) == 0  # fmt: skip
    packed = load_compressed(tmp_path / "c" / "model.compressed.safetensors")
    assert all(torch.equal(packed[k], state[k]) for k in state)
    size = (tmp_path / "c" / "model.compressed.safetensors").stat().st_size
    assert size < (tmp_path / "st" / "model.safetensors").stat().st_size


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_torchscript(finished_run, tmp_path):
    assert main(["export", str(finished_run), "--format", "torchscript", "--out",
                 str(tmp_path)]) == 0  # fmt: skip
    run = prunekit.load_run(finished_run)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    x = run.example_input()
    with torch.no_grad():  # on the CPU, like the reloaded model (the runner may have used CUDA)
        assert torch.equal(scripted(x), run.model(x))
    assert run.matches_reference()


def test_export_onnx(finished_run, tmp_path):
    import prunekit.export as export

    if not hasattr(export, "to_onnx"):
        pytest.skip("prunekit.export.to_onnx is not in this installation")
    pytest.importorskip("onnx")
    assert main(["export", str(finished_run), "--format", "onnx", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_export_onnx_runs_at_any_batch_unless_static(finished_run, tmp_path):
    import numpy as np

    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    run = prunekit.load_run(finished_run)
    assert (
        main(["export", str(finished_run), "--format", "onnx", "--out", str(tmp_path / "d")]) == 0
    )
    session = ort.InferenceSession(str(tmp_path / "d" / "model.onnx"))
    x = torch.randn(3, *run.example_input().shape[1:])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, run.model(x).numpy(), atol=1e-4, rtol=0)
    static = ["--format", "onnx", "--out", str(tmp_path / "s"), "--static-batch"]
    assert main(["export", str(finished_run), *static]) == 0
    session = ort.InferenceSession(str(tmp_path / "s" / "model.onnx"))
    assert session.get_inputs()[0].shape == list(run.example_input().shape)


def test_export_errors(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run), "--format", "hf", "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit export: error: format: 'hf' needs a run whose model came")
    assert not (tmp_path / "h").exists()  # nothing left behind
    assert main(["export", str(tmp_path), "--format", "compressed", "--out", str(tmp_path)]) == 2
    assert "is not a finished run (no result.json)" in capsys.readouterr().err
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert main(["export", str(finished_run), "--format", "compressed", "--out", str(link)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()
