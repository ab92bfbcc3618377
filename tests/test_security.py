"""Untrusted files stay data: nothing named in a file runs, writes never follow a planted symlink,
remote model code never runs, the unpickler admits numeric arrays only, sweep workers die with
their parent, stale temp files are cleaned and new files respect the umask."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit.structured as st
from prunekit.core.safety import UnsafeFileError, resolve_callable, resolve_transformers_class
from prunekit.data import restricted_load
from prunekit.models import create_model

SRC = str(Path(st.__file__).resolve().parents[2])
TESTS = str(Path(__file__).resolve().parent)


# ------------------------------------------------------------- 1. names in files never run
def _saved_mlp(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("mlp", in_features=8, hidden=(8,), num_classes=3)
    return st.save_pruned(model, tmp_path / "pruned")


def _plant_module(tmp_path: Path, monkeypatch, marker: Path) -> str:
    """A module on sys.path whose import (and whose build()) creates ``marker``."""
    name = f"payload_{os.getpid()}_{len(str(tmp_path)) % 97}"
    code = f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        def build(**kwargs):
            import prunekit
            return prunekit.models.create_model("mlp", **kwargs)
    """
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _arch_payloads(marker: Path, module: str) -> dict[str, dict]:
    return {
        "os.system": {
            "kind": "callable",
            "name": "os:system",
            "kwargs": {"command": f"touch {marker}"},
        },
        "planted module": {"kind": "callable", "name": f"{module}:build", "kwargs": {}},
        "builtins.exec": {
            "kind": "callable",
            "name": "builtins:exec",
            "kwargs": {"source": f"open({str(marker)!r}, 'w')"},
        },
        "hf class os.system": {"kind": "hf", "class": "os:system", "config_class": "os:system"},
        "hf class outside transformers": {
            "kind": "hf",
            "class": f"{module}:build",
            "config_class": "transformers:GPT2Config",
        },
        "hf non-model attribute": {
            "kind": "hf",
            "class": "transformers:GPT2Config",
            "config_class": "transformers:GPT2Config",
        },
    }


PAYLOADS = list(_arch_payloads(Path("m"), "x"))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_pruned_never_imports_a_name_from_the_file(tmp_path, monkeypatch, payload):
    marker = tmp_path / "marker"
    module = _plant_module(tmp_path, monkeypatch, marker)
    out = _saved_mlp(tmp_path)
    arch_file = out / "architecture.json"
    arch = json.loads(arch_file.read_text())
    arch["factory"] = _arch_payloads(marker, module)[payload]
    if arch["factory"]["kind"] == "hf":
        arch["config"] = {"kind": "hf", "values": {}}
    arch_file.write_text(json.dumps(arch))
    with pytest.raises(UnsafeFileError) as info:
        st.load_pruned(out)
    assert str(arch_file) in str(info.value) and "factory." in str(info.value)
    assert not marker.exists()
    assert module not in sys.modules


def test_load_pruned_imports_only_what_the_caller_allows(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    module = _plant_module(tmp_path, monkeypatch, marker)
    torch.manual_seed(0)
    model = create_model("mlp", in_features=8, hidden=(8,), num_classes=3)
    out = st.save_pruned(model, tmp_path / "pruned", f"{module}:build", in_features=8, hidden=[8],
                         num_classes=3)  # fmt: skip
    with pytest.raises(UnsafeFileError, match="allow_import"):
        st.load_pruned(out, allow_import=["otherpkg"])
    assert not marker.exists()
    calls = []

    def build(**kwargs):
        calls.append(kwargs)
        return create_model("mlp", **kwargs)

    rebuilt = st.load_pruned(out, factory=build)  # the caller's own callable: no import
    assert calls == [{"in_features": 8, "hidden": [8], "num_classes": 3}] and not marker.exists()
    x = torch.randn(2, 8)
    assert torch.equal(rebuilt(x), model(x))
    rebuilt = st.load_pruned(out, allow_import=[module])  # positive control: the payload is live
    assert marker.read_text() == "ran" and torch.equal(rebuilt(x), model(x))


def test_resolvers_refuse_names_outside_trusted_sources(tmp_path):
    src = tmp_path / "file.json"
    with pytest.raises(UnsafeFileError, match=r"file\.json: model: refusing to import 'os:system'"):
        resolve_callable("os:system", source=src, entry="model")
    with pytest.raises(UnsafeFileError, match="private"):
        resolve_callable("json:_default_decoder.decode", source=src, entry="m", allow_import="json")
    assert resolve_callable("json.decoder:JSONDecoder", source=src, entry="m",
                            allow_import=["json"]) is json.JSONDecoder  # fmt: skip
    pytest.importorskip("transformers")
    import transformers

    got = resolve_transformers_class("transformers.models.gpt2:GPT2LMHeadModel", source=src,
                                     entry="class")  # fmt: skip
    assert got is transformers.GPT2LMHeadModel
    with pytest.raises(UnsafeFileError, match="not a transformers config class"):
        resolve_transformers_class("GPT2LMHeadModel", source=src, entry="c", kind="config")


def test_configs_inside_output_folders_are_recognised(tmp_path):
    from prunekit.core.safety import is_output_file

    user = tmp_path / "configs" / "exp.yaml"
    user.parent.mkdir()
    user.write_text("model: {}")
    run = tmp_path / "out" / "runs" / "r1"
    run.mkdir(parents=True)
    (tmp_path / "out" / "results.sqlite").write_bytes(b"")
    (run / "config.yaml").write_text("model: {}")
    assert not is_output_file(user) and is_output_file(run / "config.yaml")


# ------------------------------------------------------------- 2. writes never follow symlinks
def _write_json(path: Path) -> None:
    from prunekit.core.serialization import write_json

    write_json({"a": 1}, path)


def _save_safetensors(path: Path) -> None:
    from prunekit.core.serialization import save_safetensors

    save_safetensors({"w": torch.ones(2)}, path, {"k": 1})


def _atomic_path(path: Path) -> None:
    from prunekit.core.serialization import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")


def _run_log(path: Path) -> None:
    from prunekit.recipes.files import RunLog

    RunLog(path, quiet=True)("a log line")


def _lock(path: Path) -> None:
    from prunekit.recipes.files import locked as _locked

    assert path.name == ".lock"
    with _locked(path.parent):
        pass


def _results_db(path: Path) -> None:
    from prunekit.experiments.store import ResultsStore

    assert path.name == "results.sqlite"
    ResultsStore(path.parent)


def _structured_save(path: Path) -> None:
    assert path.name == "architecture.json"
    st.save_pruned(create_model("mlp", in_features=4, hidden=(4,), num_classes=2), path.parent)


def _report_file(path: Path) -> None:
    from prunekit.experiments.report import write_report

    assert path.name == "report.md"
    result = {"name": "r", "method": "m", "seed": 0, "target_sparsity": 0.5, "sparsity": 0.5,
              "final": {"test_top1": 0.5}, "dense": {}, "phases": []}  # fmt: skip
    from prunekit.core.serialization import write_json

    write_json(result, path.parent / "runs" / "r" / "result.json")
    write_report(path.parent, plots=False)


def _mask_save(path: Path) -> None:
    from prunekit.core.masks import MaskSet

    MaskSet.from_model(torch.nn.Linear(4, 4)).save(path)


def _llm_save(path: Path) -> None:
    from prunekit.llm.io import save_pruned

    assert path.name == "model.safetensors"
    gpt = create_model("gpt", n_layer=1, n_embd=8, n_head=2, block_size=8)
    save_pruned(gpt, path.parent, report={"method": "magnitude"})


WRITERS = {
    "write_json": (_write_json, "out.json"),
    "save_safetensors": (_save_safetensors, "ckpt.safetensors"),
    "atomic_path": (_atomic_path, "plot.png"),
    "log.txt append": (_run_log, "log.txt"),
    "run .lock": (_lock, ".lock"),
    "results.sqlite": (_results_db, "results.sqlite"),
    "structured save": (_structured_save, "architecture.json"),
    "report.md": (_report_file, "report.md"),
    "masks": (_mask_save, "masks.safetensors"),
    "prune-llm output": (_llm_save, "model.safetensors"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writers_refuse_a_planted_symlink(tmp_path, writer):
    fn, name = WRITERS[writer]
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    link = out / name
    link.symlink_to(victim)
    with pytest.raises(UnsafeFileError) as info:
        fn(link)
    assert f"refusing to write through symlink {str(link)!r}" in str(info.value)
    assert victim.read_bytes() == b"precious" and link.is_symlink()


def test_symlinked_folder_inside_the_output_is_refused(tmp_path):
    from prunekit.core.serialization import output_root, write_json

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").symlink_to(elsewhere, target_is_directory=True)
    with output_root(out), pytest.raises(UnsafeFileError, match="symlink") as info:
        write_json({"a": 1}, out / "runs" / "r1" / "result.json")
    assert str(out / "runs") in str(info.value)
    assert list(elsewhere.iterdir()) == []
    write_json({"a": 1}, out / "ok" / "result.json")  # real folders below the root are fine
    with output_root(tmp_path / "link-to-out"):
        pass
    (tmp_path / "link-to-out").symlink_to(out, target_is_directory=True)
    with output_root(tmp_path / "link-to-out"):  # the root itself may be the user's link
        write_json({"b": 2}, tmp_path / "link-to-out" / "x.json")
    assert json.loads((out / "x.json").read_text()) == {"b": 2}


def test_cli_names_the_symlink_and_exits_2(tmp_path, capsys):
    from prunekit.cli import main

    victim = tmp_path / "victim.md"
    victim.write_text("keep")
    runs = tmp_path / "o" / "runs" / "r"
    from prunekit.core.serialization import write_json

    write_json({"name": "r", "method": "m", "seed": 0, "target_sparsity": 0.5, "sparsity": 0.5,
                "final": {"test_top1": 0.5}, "dense": {}, "phases": []},
               runs / "result.json")  # fmt: skip
    (tmp_path / "o" / "report.md").symlink_to(victim)
    assert main(["report", str(tmp_path / "o"), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "o" / "report.md") in err[0]
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("planted", [".lock", "log.txt", "config.yaml"])
def test_prunekit_run_refuses_links_planted_in_its_run_directory(tmp_path, capsys, planted):
    import yaml

    from prunekit.cli import main
    from prunekit.experiments.config import load_config
    from prunekit.experiments.runner import run_dir

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "name": "planted", "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "data": {"name": "digits"}, "train": {"epochs": 1, "threads": 1},
        "prune": {"sparsity": 0.5}, "output": str(tmp_path / "out"),
    }))  # fmt: skip
    root = run_dir(load_config(config))
    root.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (root / planted).symlink_to(victim)
    assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to write through symlink {str(root / planted)!r}" in err
    assert victim.read_text() == "precious"


# ------------------------------------------------------------- 3. remote model code never runs
def _remote_code_model(root: Path, marker: Path, known_type: bool) -> Path:
    sys.path.insert(0, TESTS)
    try:
        from _llm_tiny import save_tiny
    finally:
        sys.path.remove(TESTS)
    save_tiny("gpt2", root)
    code = f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        from transformers import GPT2Config, GPT2LMHeadModel
        class EvilConfig(GPT2Config):
            model_type = "evil"
        class EvilModel(GPT2LMHeadModel):
            config_class = EvilConfig
    """
    (root / "evil.py").write_text(textwrap.dedent(code))
    cfg = json.loads((root / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    if not known_type:
        cfg["model_type"], cfg["architectures"] = "evil", ["EvilModel"]
    (root / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.mark.parametrize("known_type", [True, False], ids=["gpt2+auto_map", "custom-type"])
def test_prune_llm_never_runs_remote_code(tmp_path, monkeypatch, capsys, known_type):
    pytest.importorskip("transformers")
    from prunekit.cli import main

    marker = tmp_path / "marker"
    model_dir = _remote_code_model(tmp_path / "model", marker, known_type)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))  # answers any trust prompt
    argv = ["prune-llm", str(model_dir), "--method", "magnitude", "--out", str(tmp_path / "o"),
            "--no-progress"]  # fmt: skip
    rc = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists()
    if known_type:  # the built-in GPT-2 class loads; the shipped code is ignored
        assert rc == 0 and (tmp_path / "o" / "masks.safetensors").is_file()
    else:
        assert rc == 2 and str(model_dir / "config.json") in err and "--trust-remote-code" in err


@pytest.mark.slow
def test_trust_remote_code_flag_is_the_only_way_in(tmp_path):
    """Positive control in a subprocess (its own module cache): with the flag, the code runs."""
    pytest.importorskip("transformers")
    marker = tmp_path / "marker"
    model_dir = _remote_code_model(tmp_path / "model", marker, known_type=False)
    env = dict(os.environ, PYTHONPATH=SRC, HF_HOME=str(tmp_path / "hf"),
               HF_MODULES_CACHE=str(tmp_path / "hf" / "modules"), OMP_NUM_THREADS="1")  # fmt: skip
    code = f"from prunekit.llm.io import load_model; load_model({str(model_dir)!r}, trust_remote_code=True)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300,
                   stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
    assert marker.read_text() == "ran"
    from prunekit.cli import build_parser

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["prune-llm"]
                         .format_help().split())  # fmt: skip
    assert "--trust-remote-code" in help_text and "trust_remote_code=False" in help_text


# ------------------------------------------------------------- 10. unpickler: numeric arrays only
def _forged_flags() -> bytes:
    raw = pickle.dumps(np.arange(4, dtype=np.float64), protocol=2)
    state = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert raw.count(state) == 1
    return raw.replace(state, b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3ft")  # flags: holds objects


def _ndarray_called() -> bytes:
    # numpy.ndarray((2,), 'O') called through REDUCE: an object array without _reconstruct
    return b"cnumpy\nndarray\n((I2\ntS'O'\ntR."


def _object_dtype() -> bytes:
    return b"cnumpy\ndtype\n(S'O8'\nI00\nI01\ntR."


def _structured_dtype() -> bytes:
    return pickle.dumps(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), protocol=2)


def _reconstruct_other_type() -> bytes:
    return b"cnumpy._core.multiarray\n_reconstruct\n(cnumpy\ndtype\nS'f8'\nS'b'\ntR."


def _py2_array(data: bytes) -> bytes:
    """A uint8 array of shape (4,) as Python 2's numpy pickles it (byte strings), text protocol."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR(I1\n(I4\nt"
        b"cnumpy\ndtype\n(S'u1'\nI00\nI01\ntR(I3\nS'|'\nNNNI-1\nI-1\nI0\ntbI00\nS'"
        + data
        + b"'\ntb."
    )


def _short_data() -> bytes:
    return _py2_array(b"\\x00\\x01\\x02")


def _frombuffer_object() -> bytes:
    return (
        b"\x80\x05cnumpy._core.numeric\n_frombuffer\n(C\x08\x00\x00\x00\x00\x00\x00\x00\x00"
        b"cnumpy\ndtype\n(S'O8'\nI00\nI01\ntR(I1\ntS'C'\ntR."
    )


def _builtin_call() -> bytes:
    return b"cbuiltins\neval\n(S'1+1'\ntR."


PICKLES = {
    "forged dtype flags": _forged_flags,
    "numpy.ndarray called": _ndarray_called,
    "object dtype": _object_dtype,
    "structured dtype": _structured_dtype,
    "_reconstruct of another type": _reconstruct_other_type,
    "data shorter than shape": _short_data,
    "protocol-5 object buffer": _frombuffer_object,
    "builtins.eval": _builtin_call,
}


@pytest.mark.parametrize("payload", list(PICKLES))
def test_unpickler_rejects(payload):
    with pytest.raises(pickle.UnpicklingError, match="restricted unpickler"):
        restricted_load(PICKLES[payload]())


def test_unpickler_reads_python2_pickles():
    out = restricted_load(_py2_array(b"\\x00\\x01\\x02\\xff"))
    assert out.dtype == np.uint8 and out.tolist() == [0, 1, 2, 255]


@pytest.mark.parametrize("dtype", ["?", "u1", ">i4", "<i8", "f2", ">f8", "c8", "c16"])
@pytest.mark.parametrize("protocol", [2, 5])
def test_unpickler_keeps_numeric_arrays_exact(dtype, protocol):
    data = np.arange(6).reshape(2, 3).astype(dtype)
    out = restricted_load(pickle.dumps({b"x": data, b"t": np.asfortranarray(data)}, protocol))
    for key in (b"x", b"t"):
        assert type(out[key]) is np.ndarray and out[key].dtype == np.dtype(dtype)
        assert out[key].tobytes() == data.tobytes() or np.array_equal(out[key], data)
        assert np.array_equal(out[key], data)


# ------------------------------------------------------------- 11. workers, temp files, modes
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see worker processes")
@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_sweep_workers_exit_when_the_parent_is_killed(tmp_path, sig):
    code = textwrap.dedent(
        """
        import time
        from prunekit.experiments.sweep import _pool
        pool = _pool(2)
        futures = [pool.submit(time.sleep, 600) for _ in range(2)]
        while len(pool._processes) < 2 or not all(p.pid for p in pool._processes.values()):
            time.sleep(0.05)
        time.sleep(0.5)
        print(" ".join(str(pid) for pid in pool._processes), flush=True)
        time.sleep(600)
        """
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60  # generous: a loaded machine
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize("where", ["top", "nested", "folder"])
def test_stale_temp_files_are_removed_at_the_next_start(tmp_path, where):
    from prunekit.core.serialization import TMP_PREFIX, TMP_SUFFIX, atomic_path
    from prunekit.recipes.files import locked as _locked

    run = tmp_path / "run"
    sub = run / "phase_1" if where == "nested" else run
    sub.mkdir(parents=True)
    stale = sub / f"{TMP_PREFIX}model.safetensors.0badc0de{TMP_SUFFIX}"
    if where == "folder":
        stale.mkdir()
        (stale / "config.json").write_text("{}")
    else:
        stale.write_bytes(b"half written")
    keep = [sub / "model.safetensors.tmp", sub / ".other.tmp", sub / "notes.txt"]
    for path in keep:
        path.write_text("user file")
    with atomic_path(sub / "x.json") as tmp:  # prunekit's own temp names are recognisable
        assert tmp.name.startswith(TMP_PREFIX) and tmp.name.endswith(TMP_SUFFIX)
        tmp.write_text("{}")
    with _locked(run):
        assert not stale.exists()
    assert all(path.read_text() == "user file" for path in keep)


def test_stale_temp_files_are_removed_by_the_next_llm_save(tmp_path):
    from prunekit.core.serialization import TMP_PREFIX, TMP_SUFFIX
    from prunekit.llm.io import save_pruned

    out = tmp_path / "out"
    stale = out / f"{TMP_PREFIX}save-killed{TMP_SUFFIX}"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    gpt = create_model("gpt", n_layer=1, n_embd=8, n_head=2, block_size=8)
    save_pruned(gpt, out, report={"method": "magnitude"})
    assert not stale.exists() and (out / "model.safetensors").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize(
    "writer", ["write_json", "save_safetensors", "log.txt append", "atomic_path"]
)
def test_new_files_respect_the_umask(tmp_path, umask, writer):
    fn, name = WRITERS[writer]
    old = os.umask(umask)
    try:
        fn(tmp_path / name)
    finally:
        os.umask(old)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
