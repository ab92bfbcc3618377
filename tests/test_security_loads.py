"""Wrong results are refused loudly, loads are transactional, and user errors read as one line.

Covers: stage stamps (a file copied from another config is refused, naming both hashes and the
file), unreadable results in reports, transactional loaders, allocations that would empty layers,
NaN gradients under fast mask enforcement, and the CLI's error lines, exit codes and --debug.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import prunekit
from conftest import toy_mlp
from prunekit import MaskSet
from prunekit.cli import main
from prunekit.core.allocation import LayerCollapseWarning
from prunekit.core.errors import DeviceError, DiskFullError, FileFormatError, StaleFileError
from prunekit.core.stamps import stamped
from prunekit.experiments.config import config_hash, resolve
from prunekit.experiments.runner import run_dir, run_experiment
from prunekit.experiments.store import ResultsStore
from prunekit.export import load_compressed_into, save_compressed
from prunekit.structured.serialize import load_pruned, save_pruned
from prunekit.training.checkpoint import load_checkpoint, save_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny(tmp_path: Path, sparsity: float, **train) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "digits"},
        "train": {
            "epochs": 1,
            "batch_size": 64,
            "lr": 0.05,
            "threads": 1,
            "checkpoint_every": 5,
            **train,
        },  # fmt: skip
        "prune": {"sparsity": sparsity},
        "retrain": {"epochs": 0.5, "schedule": "llr"},
        "output": str(tmp_path / "out"),
    }


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].view(torch.uint8).equal(b[k].view(torch.uint8))
        if a[k].numel()
        else True
        for k in a
    )


def trained(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 32)).sum().backward()
    optimizer.step()


# ---------------------------------------------------------------------- stage stamps
def test_phase_outputs_copied_from_another_sparsity_are_refused(tmp_path):
    half = resolve(tiny(tmp_path, 0.5))
    run_experiment(half, quiet=True)
    high = resolve(tiny(tmp_path, 0.8))
    target = run_dir(high) / "phase_1"
    shutil.copytree(run_dir(half) / "phase_1", target)
    with pytest.raises(StaleFileError) as info:
        run_experiment(high, quiet=True)
    message = str(info.value)
    assert config_hash(half) in message and config_hash(high) in message
    assert str(target / "model.safetensors") in message
    assert not (run_dir(high) / "result.json").exists()


def test_masks_alone_copied_from_another_run_are_refused(tmp_path):
    half = resolve(tiny(tmp_path, 0.5))
    run_experiment(half, quiet=True)
    high = resolve(tiny(tmp_path, 0.8))
    (run_dir(high) / "phase_1").mkdir(parents=True)
    shutil.copy(run_dir(half) / "phase_1" / "masks.safetensors", run_dir(high) / "phase_1")
    with pytest.raises(StaleFileError, match="masks.safetensors"):
        run_experiment(high, quiet=True)


def test_phase_checkpoint_copied_from_another_sparsity_is_refused(tmp_path, monkeypatch):
    """A 0.5 run killed after its phase checkpoint; that checkpoint copied into a 0.8 run."""
    import prunekit.recipes.executor as runner

    save_state = runner.save_state

    def interrupt(model, path, meta=None):
        if path.parent.name == "phase_1":
            raise KeyboardInterrupt
        save_state(model, path, meta)

    half = resolve(tiny(tmp_path, 0.5))
    monkeypatch.setattr(runner, "save_state", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(half, quiet=True)
    monkeypatch.setattr(runner, "save_state", save_state)
    ckpt = run_dir(half) / "phase_1" / "ckpt" / "checkpoint.safetensors"
    assert ckpt.is_file()

    high = resolve(tiny(tmp_path, 0.8))
    copied = run_dir(high) / "phase_1" / "ckpt" / "checkpoint.safetensors"
    copied.parent.mkdir(parents=True)
    shutil.copy(ckpt, copied)
    with pytest.raises(StaleFileError) as info:
        run_experiment(high, quiet=True)
    assert str(copied) in str(info.value)
    assert config_hash(half) in str(info.value) and config_hash(high) in str(info.value)

    # the 0.5 run itself resumes from its own checkpoint and finishes
    assert run_experiment(half, quiet=True)["target_sparsity"] == 0.5


def test_result_json_from_another_config_is_refused(tmp_path):
    half = resolve(tiny(tmp_path, 0.5))
    run_experiment(half, quiet=True)
    high = resolve(tiny(tmp_path, 0.8))
    run_dir(high).mkdir(parents=True)
    shutil.copy(run_dir(half) / "result.json", run_dir(high) / "result.json")
    with pytest.raises(StaleFileError, match="result.json"):
        run_experiment(high, quiet=True)


def test_checkpoint_stamp_names_both_stages(tmp_path):
    model = toy_mlp()
    path = tmp_path / "ck.safetensors"
    with stamped("a" * 64, "phase_1"):
        save_checkpoint(path, model)
    other = toy_mlp()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    before = snapshot(other)
    with stamped("a" * 64, "phase_2"), pytest.raises(StaleFileError, match="'phase_1'.*'phase_2'"):
        load_checkpoint(path, other)
    assert bitwise_equal(before, other.state_dict())
    with stamped("a" * 64, "phase_1"):
        load_checkpoint(path, other, restore_rng=False)
    assert bitwise_equal(snapshot(model), other.state_dict())


# ---------------------------------------------------------------------- report
def test_report_warns_about_unreadable_results(tmp_path, capsys):
    cfg = resolve(tiny(tmp_path, 0.5))
    run_experiment(cfg, quiet=True)
    for seed in (1, 2):
        run_experiment(resolve({**tiny(tmp_path, 0.5), "seed": seed}), quiet=True)
    broken = run_dir(resolve({**tiny(tmp_path, 0.5), "seed": 2}))
    (broken / "result.json").write_text('{"final": {"test_top1": 0.5')
    code = main(["report", str(tmp_path / "out"), "--no-plots"])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"warning: skipped run {str(broken)!r}: unreadable result.json" in err
    assert f"warning: skipped run {str(broken)!r}" in out  # the line under the table
    report = (tmp_path / "out" / "report.md").read_text()
    assert str(broken) in report


# ---------------------------------------------------------------------- transactional loads
def test_checkpoint_without_optimizer_state_leaves_model_and_optimizer_untouched(tmp_path):
    source = toy_mlp()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, source)  # no optimizer state in the file
    model = nn.Sequential(*[nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(),
                            nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 4)])  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    trained(model, optimizer)
    before_model, before_opt = snapshot(model), optimizer.state_dict()
    rng = torch.get_rng_state()
    with pytest.raises(FileFormatError, match="no optimizer state") as info:
        load_checkpoint(path, model, optimizer)
    assert str(path) in str(info.value)
    assert bitwise_equal(before_model, model.state_dict())
    after_opt = optimizer.state_dict()
    for idx, entry in before_opt["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, after_opt["state"][idx][key])
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize("problem", ["shape", "dtype", "missing", "optimizer_groups"])
def test_checkpoint_that_does_not_fit_changes_nothing(tmp_path, problem):
    source = toy_mlp()
    opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    trained(source, opt)
    model = toy_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if problem == "shape":
        source[6] = nn.Linear(16, 5)
        opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
        trained(source, opt)
    elif problem == "dtype":
        source[6].double()
    elif problem == "missing":
        source = nn.Sequential(*list(source)[:5])
        opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.SGD([{"params": list(model.parameters())[:2]},
                                     {"params": list(model.parameters())[2:]}],
                                    lr=0.1, momentum=0.9)  # fmt: skip
    trained(model, optimizer)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, source, opt)
    before_model = snapshot(model)
    before_opt = {k: v.clone() for k, v in optimizer.state[model[0].weight].items()}
    with pytest.raises(FileFormatError) as info:
        load_checkpoint(path, model, optimizer)
    assert str(path) in str(info.value)
    assert bitwise_equal(before_model, model.state_dict())
    after_opt = optimizer.state[model[0].weight]
    assert all(torch.equal(before_opt[k], after_opt[k]) for k in before_opt)


def test_compressed_load_that_does_not_fit_changes_nothing(tmp_path):
    source = toy_mlp()
    prunekit.prune(source, 0.5).finalize(source)
    path = tmp_path / "model.compressed.safetensors"
    save_compressed(source, path)
    model = nn.Sequential(*[nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(),
                            nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 3)])  # fmt: skip
    before = snapshot(model)
    with pytest.raises(FileFormatError, match="does not fit the model") as info:
        load_compressed_into(model, path)
    assert str(path) in str(info.value)
    assert bitwise_equal(before, model.state_dict())


@pytest.mark.skipif(
    os.environ.get("PRUNEKIT_VIRTUAL_CUDA") == "1",
    reason="the virtual device stands in for meta: no real meta tensors can be made",
)
def test_meta_device_model_is_refused_clearly(tmp_path):
    path = tmp_path / "model.compressed.safetensors"
    save_compressed(toy_mlp(), path)
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(),
                              nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 4))  # fmt: skip
    with pytest.raises(DeviceError, match="meta device"):
        load_compressed_into(model, path)
    with pytest.raises(DeviceError, match="meta device"):
        prunekit.prune(model, 0.5)


def test_masks_with_wrong_dtype_or_missing_metadata(tmp_path):
    from safetensors.torch import save_file

    from prunekit.core.masks import FORMAT as masks_format

    path = tmp_path / "masks.safetensors"
    MaskSet({"0.weight": torch.ones(64, 32, dtype=torch.bool)}).save(path)
    meta = {"format": masks_format, "shapes": {"0.weight": [64, 32]}, "order": ["0.weight"]}
    save_file({"0.weight": torch.ones(256, dtype=torch.float32)}, str(path),
              metadata={"prunekit": json.dumps(meta)})  # fmt: skip
    with pytest.raises(FileFormatError, match="dtype torch.float32, expected torch.uint8"):
        MaskSet.load(path)
    del meta["order"]
    save_file({"0.weight": torch.ones(256, dtype=torch.uint8)}, str(path),
              metadata={"prunekit": json.dumps(meta)})  # fmt: skip
    with pytest.raises(FileFormatError, match="metadata key 'order' is missing") as info:
        MaskSet.load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------- never empty a layer
@pytest.mark.parametrize("allocation", ["uniform", "erk", "per_row"])
def test_budget_allocations_keep_one_weight_per_layer(allocation):
    model = toy_mlp()
    masks = prunekit.prune(model, 0.999999, allocation=allocation)
    for name, mask in masks.items():
        kept = mask.reshape(mask.shape[0], -1).sum(1) if allocation == "per_row" else mask.sum()
        assert bool((kept >= 1).all()), name
    assert masks.sparsity < 1.0


@pytest.mark.parametrize("allocation", ["global_min_keep", "lamp", "uniform_plus"])
def test_allocations_with_a_minimum_raise_when_out_of_reach(allocation):
    model = toy_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="sparsity: 0.999999 is out of reach"):  # names it
        prunekit.prune(model, 0.999999, allocation=allocation)
    assert bitwise_equal(before, model.state_dict())


def test_global_never_empties_the_whole_model():
    model = toy_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="would prune every target weight"):
        prunekit.prune(model, 0.999999)
    assert bitwise_equal(before, model.state_dict())


def test_global_layer_collapse_is_announced():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.fill_(1e-6)
    with pytest.warns(LayerCollapseWarning, match="'1.weight'"):
        masks = prunekit.prune(model, 0.5)
    assert not bool(masks["1.weight"].any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam, "custom"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradients_leave_pruned_weights_exactly_zero(fast, optimizer_cls, bad, dtype):
    model = toy_mlp().to(dtype)
    masks = prunekit.prune(model, 0.7)

    class Custom(torch.optim.SGD):  # a subclass: enforced after the step
        pass

    cls = Custom if optimizer_cls == "custom" else optimizer_cls
    optimizer = cls(model.parameters(), lr=0.1)
    with masks.attach(optimizer, model, fast=fast):
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(4, 32, dtype=dtype)).sum().backward()
            for p in model.parameters():
                p.grad.fill_(bad)
            optimizer.step()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        pruned = params[name].detach()[~mask]
        assert pruned.numel() > 0
        assert bool((pruned == 0).all()), name
        assert not bool(torch.signbit(pruned).any())  # +0.0, not NaN or -0.0 artefacts


# ---------------------------------------------------------------------- CLI error lines
def _write_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path, 0.5, **train)))
    return path


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_before_any_work(tmp_path, capsys):
    config = _write_config(tmp_path, device="cuda")
    assert main(["run", str(config), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "train.device" in line and "CUDA is not available" in line
    assert not (tmp_path / "out" / "runs").exists()
    assert not (tmp_path / "out" / "dense").exists()


def test_corrupt_results_database_names_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(FileFormatError, match="results.sqlite"):
        ResultsStore(out)
    assert main(["run", str(_write_config(tmp_path)), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(out / "results.sqlite") in line


def test_corrupt_json_names_the_file(tmp_path, capsys):
    cfg = resolve(tiny(tmp_path, 0.5))
    run_experiment(cfg, quiet=True)
    done = run_dir(cfg) / "phase_1" / "phase.json"
    (run_dir(cfg) / "result.json").unlink()
    done.write_text("{not json")
    assert main(["run", str(_write_config(tmp_path)), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(done) in line and "not valid JSON" in line


def test_disk_full_names_the_path_and_keeps_earlier_files(tmp_path, monkeypatch):
    import prunekit.core.serialization as serialization

    path = tmp_path / "masks.safetensors"
    MaskSet({"w": torch.ones(4, 4, dtype=torch.bool)}).save(path)
    before = path.read_bytes()

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(serialization, "save_file", full)
    with pytest.raises(DiskFullError) as info:
        MaskSet({"w": torch.zeros(4, 4, dtype=torch.bool)}).save(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.safetensors"]  # no temp left


def test_disk_full_in_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    import prunekit.core.serialization as serialization

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(serialization, "save_file", full)
    assert main(["run", str(_write_config(tmp_path)), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no space left on device" in line and "init.safetensors" in line


def test_ctrl_c_prints_how_to_resume(tmp_path, monkeypatch, capsys):
    import prunekit.experiments.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "build_data", interrupted)
    assert main(["run", str(_write_config(tmp_path)), "--quiet"]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    config = str(tmp_path / "missing.safetensors")
    (tmp_path / "missing.safetensors").write_bytes(b"\x00" * 3)
    cfg = tiny(tmp_path, 0.5)
    cfg["dense_checkpoint"] = config
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert config in line and "truncated or empty" in line
    with pytest.raises(FileFormatError):  # --debug: the exception (and traceback) propagates
        main(["--debug", "run", str(path), "--quiet"])
    with pytest.raises(FileFormatError):
        main(["run", str(path), "--quiet", "--debug"])
    monkeypatch.setenv("PRUNEKIT_DEBUG", "1")
    with pytest.raises(FileFormatError):
        main(["run", str(path), "--quiet"])


def test_cli_subprocess_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    masks = tmp_path / "masks.safetensors"
    masks.write_bytes(b"")
    cfg = tiny(tmp_path, 0.5)
    cfg["dense_checkpoint"] = str(masks)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "prunekit.cli", "run", str(path), "--quiet"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert str(masks) in _one_line(done.stderr)


def test_calibration_ids_outside_the_vocabulary(tmp_path):
    from prunekit.llm.evaluation import perplexity
    from prunekit.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16))
    tokens = torch.full((200,), 40, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"token id 40 is outside the model's vocabulary \[0, 32\)"
    ):
        prunekit.llm.prune_llm(model, "wanda", 0.5, calibration=tokens, nsamples=2, seqlen=8)
    with pytest.raises(ValueError, match="data: token id 40"):
        perplexity(model, tokens, seqlen=8)


def test_structured_load_checks_shapes_against_the_weights(tmp_path):
    from prunekit.models import create_model

    model = create_model("mlp", in_features=8, num_classes=3, hidden=[6])
    save_pruned(model, tmp_path / "m")
    arch_file = tmp_path / "m" / "architecture.json"
    arch = json.loads(arch_file.read_text())
    name = next(n for n, rec in arch["modules"].items() if rec["params"])
    pname = next(iter(arch["modules"][name]["params"]))
    arch["modules"][name]["params"][pname] = [100000, 100000]
    arch_file.write_text(json.dumps(arch))
    with pytest.raises(FileFormatError, match="architecture.json"):
        load_pruned(tmp_path / "m")


def test_results_database_row_is_never_unpickled_or_evaluated(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("r", "h", {"a": 1}, "done", {"m": 1.0}, str(tmp_path), "x")
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        db.execute("UPDATE runs SET config = ? WHERE run_id = 'r'", ("{broken",))
    with pytest.raises(FileFormatError, match="run 'r' holds corrupt JSON"):
        store.runs()


def test_prune_llm_with_corrupt_weights_names_the_folder(tmp_path, capsys):
    pytest.importorskip("transformers")
    from _llm_tiny import save_tiny

    src = save_tiny("opt", tmp_path / "dense")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    capsys.readouterr()  # the progress bar of saving
    for mutated in (b"", data[: len(data) // 2], bytes(range(256)) * 4):
        weights.write_bytes(mutated)
        args = ["prune-llm", str(src), "--method", "magnitude", "--out", str(tmp_path / "o")]
        assert main([*args, "--no-progress"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(src) in line and "safetensors" in line
    assert not (tmp_path / "o").exists()


def test_trainer_seed_mismatch_leaves_the_model_untouched(tmp_path):
    from conftest import toy_bundle
    from prunekit.training.trainer import Trainer

    data = toy_bundle()
    first = nn.Linear(12, 3)
    Trainer(first, data.train, iterations=2, batch_size=16, seed=1, device="cpu",
            checkpoint_dir=tmp_path, checkpoint_every=1).fit()  # fmt: skip
    model = nn.Linear(12, 3)
    before = snapshot(model)
    trainer = Trainer(model, data.train, iterations=2, batch_size=16, seed=2, device="cpu",
                      checkpoint_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="written with seed 1, this run has 2"):
        trainer.load()
    assert bitwise_equal(before, model.state_dict())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_llm_methods_never_empty_a_layer(method):
    from prunekit.llm import prune_llm
    from prunekit.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16))
    calibration = torch.randint(0, 32, (300,))
    masks, _ = prune_llm(model, method, 0.999999, calibration=calibration, nsamples=2, seqlen=8,
                         progress=False)  # fmt: skip
    assert masks and all(bool(mask.any()) for mask in masks.values())
    if method == "wanda":  # per output row
        assert all(bool(mask.any(dim=1).all()) for mask in masks.values())
