"""A `prunekit run` killed with SIGKILL resumes from its checkpoints to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from prunekit.experiments.config import load_config
from prunekit.experiments.runner import run_dir, run_experiment
from prunekit.export import load_compressed

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _config(path: Path, output: Path) -> Path:
    data = {
        "name": "killme",
        "model": {"name": "mlp", "kwargs": {"hidden": [128, 128]}},
        "data": {"name": "digits"},
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.05, "threads": 1, "checkpoint_every": 5},
        "prune": {"sparsity": 0.9, "schedule": "imp", "phases": 2, "rewind": "lr"},
        "retrain": {"epochs": 3},
        "output": str(output),
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "prunekit.cli", "run", str(config), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    pytest.fail("the run made no checkpoint in time")


def _ckpts(root: Path, pattern: str) -> bool:
    return any(p.name == "checkpoint.safetensors" for p in root.glob(pattern))


def test_sigkill_mid_training_resumes_to_same_result(tmp_path):
    config = _config(tmp_path / "c.yaml", tmp_path / "killed")
    cfg = load_config(config)
    out = tmp_path / "killed"

    # 1) killed during dense training, 2) killed during the second phase's retraining
    assert _kill_when(_start(config), lambda: _ckpts(out, "dense/*/ckpt/*"))
    assert not any(out.glob("dense/*/metrics.json"))
    assert _kill_when(_start(config), lambda: _ckpts(out, "runs/*/phase_2/ckpt/*"))
    assert not (run_dir(cfg) / "result.json").exists()
    assert (run_dir(cfg) / "phase_1" / "phase.json").is_file()
    finished = _start(config)
    assert finished.wait(timeout=300) == 0, finished.stderr.read().decode()
    resumed = json.loads((run_dir(cfg) / "result.json").read_text())

    # a run that was never interrupted
    clean_cfg = load_config(config, [("output", str(tmp_path / "clean"))])
    clean = run_experiment(clean_cfg, quiet=True)
    assert resumed["final"] == clean["final"]
    assert resumed["dense"] == clean["dense"]
    assert [p["retrained"] for p in resumed["phases"]] == [p["retrained"] for p in clean["phases"]]
    a = load_compressed(run_dir(cfg) / "final" / "model.compressed.safetensors")
    b = load_compressed(run_dir(clean_cfg) / "final" / "model.compressed.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (run_dir(cfg) / "log.txt").read_text()
    assert "phase 1: done, skipped" in log
