"""The command line's shared conventions: --version, --out everywhere (old names as hidden
aliases), --threads on every command, sweep --dry-run, argument checks, progress defaults,
documented prune-llm options, the untrained-plan warning."""

from __future__ import annotations

import argparse
import sys

import pytest
import yaml

from prunekit import __version__
from prunekit.cli import build_parser, main
from prunekit.commands._common import apply_common, default_threads, physical_cores
from prunekit.experiments.config import resolve

TINY = {
    "name": "t",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1},
    "prune": {"sparsity": 0.7, "allocation": "lamp"},
    "retrain": {"epochs": 0.5},
}
COMMANDS = ["list", "demo", "run", "sweep", "report", "prune-llm"]


def _write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"prunekit {__version__}"


def test_every_command_takes_threads_and_every_writer_takes_out():
    commands = _subparsers()
    assert set(COMMANDS) <= set(commands)
    for name, parser in commands.items():
        options = {o for a in parser._actions for o in a.option_strings}
        assert "--threads" in options, name
        if name != "list":
            assert "--out" in options, name


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    import prunekit.commands._common as common

    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(common, "physical_cores", lambda: 8)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert common.idle_cores() == 8 and default_threads() == 4  # idle: capped at four
    monkeypatch.setattr(common.os, "getloadavg", lambda: (5.6, 0.0, 0.0))
    assert common.idle_cores() == 2 and default_threads() == 2
    monkeypatch.setattr(common.os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    assert default_threads() == 1  # an oversubscribed machine: one thread
    monkeypatch.setattr(common, "physical_cores", lambda: 1)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads() == 1
    assert 1 <= physical_cores() <= (common.os.cpu_count() or 1)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_output_is_a_hidden_alias_of_out(command, capsys):
    parser = _subparsers()[command]
    assert parser.parse_args(["c.yaml", "--output", "a"]).out == "a"
    assert parser.parse_args(["c.yaml", "--out", "b"]).out == "b"
    assert parser.parse_args(["c.yaml"]).out is None
    assert "--output" not in parser.format_help()


def test_bad_counts_are_rejected_by_the_parser(capsys):
    for argv in (["demo", "--workers", "0"], ["sweep", "c.yaml", "--workers", "-1"],
                 ["run", "c.yaml", "--threads", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "expected a positive integer" in err and argv[-2] in err, argv


def test_prune_llm_options_all_say_their_default():
    parser = _subparsers()["prune-llm"]
    text = parser.format_help()
    assert text.index("examples:") < text.index("options:")  # example first
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings[0] in ("-h", "--out"):  # help; --out is required
            continue
        assert action.help and "default" in action.help, action.option_strings


def test_progress_follows_the_terminal(monkeypatch):
    cfg = resolve(TINY)
    args = argparse.Namespace(threads=None, progress=None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    apply_common(cfg, args)
    assert cfg.train.progress is False and cfg.train.threads == 1  # the config's threads kept
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    apply_common(cfg, args)
    assert cfg.train.progress is True
    apply_common(cfg, argparse.Namespace(threads=3, progress=False))
    assert cfg.train.progress is False and cfg.train.threads == 3


def test_sweep_dry_run_lists_arms_and_runs_nothing(tmp_path, capsys):
    sweep = {"sparsities": [0.5, 0.8], "seeds": [0, 1],
             "methods": {"gm": {"prune.allocation": "global"}, "lamp": {}}}  # fmt: skip
    config = _write(tmp_path, {**TINY, "sweep": sweep})
    out = tmp_path / "o"
    assert main(["sweep", config, "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 arms (0 finished, 8 to run), 2 dense model folder(s)" in text
    assert text.count(str(out / "runs")) == 8
    assert not out.exists()


def test_dry_run_on_an_untrained_model_warns(tmp_path, capsys):
    config = _write(tmp_path, {**TINY, "output": str(tmp_path / "o")})
    assert main(["run", config, "--dry-run"]) == 0
    assert "plan is computed from its initial weights" in capsys.readouterr().out
    at_init = {**TINY, "prune": {"sparsity": 0.7, "schedule": "at_init"}}
    assert main(["run", _write(tmp_path, at_init), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert "initial weights" not in capsys.readouterr().out  # at_init prunes the initial model
