"""A run killed right after any stage of its recipe resumes to the uninterrupted result.

For every example config (shrunk by ``_tiny_examples``; sweep.yaml: its BIMP arm) and every
stage of its recipe, ``prunekit run`` is started with ``PRUNEKIT_KILL_AFTER_STAGE=<stage>`` (the
process SIGKILLs itself once the stage has committed its outputs), then run again without it:
the final weights and ``result.json`` (minus wall time and paths) must equal those of a run that
was never interrupted. The processes come from a fork server (see ``_cli_process``);
``PRUNEKIT_TEST_FRESH_PYTHON=1`` starts a fresh interpreter for each instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from _cli_process import run_cli
from _tiny_examples import EXAMPLES, state_equal, tiny_config
from prunekit.experiments.config import ExperimentConfig, load_config
from prunekit.experiments.runner import (
    build_data,
    build_model,
    recipe_of,
    run_context,
    run_dir,
)
from prunekit.experiments.typed import to_dict
from prunekit.export import load_compressed

# result.json entries that name this run's files or time it
VOLATILE = {"wall_s", "run_dir", "dense_dir", "scores_file", "selection_file", "score_seconds"}


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _final_state(cfg: ExperimentConfig) -> dict:
    return load_compressed(run_dir(cfg) / "final" / "model.compressed.safetensors")


def _result(cfg: ExperimentConfig) -> dict[str, Any]:
    return _comparable(json.loads((run_dir(cfg) / "result.json").read_text()))


def _stage_names(cfg: ExperimentConfig) -> list[str]:
    data = build_data(cfg)
    ctx = run_context(cfg, build_model(cfg, data), data, lambda message: None, None)
    return [stage.name for stage in recipe_of(cfg).stages(ctx)]


class Example:
    """One shrunk example: its config file, and its uninterrupted run (computed once)."""

    def __init__(self, path: Path, work: Path) -> None:
        self.name = path.stem
        cfg = tiny_config(path, work)
        self.file = work / "config.yaml"  # the resolved, shrunk config (for a sweep: one arm)
        self.file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.work = work
        # the reference runs in a process like the others (same device setup, e.g. under
        # PRUNEKIT_VIRTUAL_CUDA, which only this process has)
        assert run_cli(self.argv(work / "reference")) == 0, f"{self.name}: reference run"
        reference = self.config(work / "reference")
        self.result = _result(reference)
        self.state = _final_state(reference)
        self.stages = _stage_names(reference)

    def config(self, output: Path) -> ExperimentConfig:
        return load_config(self.file, [f"output={output}"])

    def argv(self, output: Path) -> list[str]:
        return ["run", str(self.file), "--quiet", "--set", f"output={output}"]

    def check(self, output: Path, what: str) -> None:
        cfg = self.config(output)
        result = _result(cfg)
        assert result == self.result, f"{self.name}, {what}: result.json differs"
        assert state_equal(_final_state(cfg), self.state) == [], f"{self.name}, {what}: weights"


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    cache: dict[str, Example] = {}

    def get(path: Path) -> Example:
        if path.stem not in cache:
            cache[path.stem] = Example(path, tmp_path_factory.mktemp(path.stem))
        return cache[path.stem]

    return get


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_killed_after_each_stage_resumes_to_the_same_result(path, examples):
    example = examples(path)
    assert example.stages, f"{example.name}: the recipe has no stages"
    for stage in example.stages:
        output = example.work / f"killed_after_{stage}"
        code = run_cli(example.argv(output), kill_after=stage)
        assert code == -9, f"{example.name}: not killed after stage {stage!r} (exit {code})"
        assert not (run_dir(example.config(output)) / "result.json").exists()
        assert run_cli(example.argv(output)) == 0, f"{example.name}: resume after {stage!r}"
        example.check(output, f"killed after stage {stage!r}")


def test_killed_after_the_last_stage_finishes_without_rerunning_a_stage(examples):
    """The rerun only writes the final outputs (the kill with ``python -m prunekit.cli``, what a
    user runs)."""
    example = examples(next(p for p in EXAMPLES if p.stem == "imp"))
    last = example.stages[-1]
    output = example.work / "killed_after_last"
    assert run_cli(example.argv(output), kill_after=last, fresh_python=True) == -9
    root = run_dir(example.config(output))
    assert not (root / "result.json").exists()
    # the stages' outputs: the shared dense directory and one directory per other stage
    folders = [output / "dense", *(root / stage for stage in example.stages)]
    stage_files = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }
    assert any(p.name == "phase.json" for p in stage_files)

    assert run_cli(example.argv(output)) == 0
    example.check(output, "killed after the last stage")
    for p, (mtime, content) in stage_files.items():
        assert (p.stat().st_mtime_ns, p.read_bytes()) == (mtime, content), f"{p} rewritten"
    rerun = (root / "log.txt").read_text().split("(config hash")[-1]  # the second run's lines
    for stage in example.stages:
        assert f"{stage.replace('_', ' ')}: done, skipped" in rerun, stage
    assert "training" not in rerun and "retraining" not in rerun
