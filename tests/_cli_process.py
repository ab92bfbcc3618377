"""Run ``prunekit`` in a separate process, optionally killed right after a stage commits.

``run_cli(argv, kill_after=...)`` starts ``prunekit <argv>`` with ``PRUNEKIT_KILL_AFTER_STAGE``
set; the process SIGKILLs itself after that stage, so the return code is -9.

A fresh ``python -m prunekit.cli`` pays 2-4 s of imports (torch) per run. By default the process
is forked from a ``multiprocessing`` fork server that imported prunekit once: still a separate
process with its own memory, killed the same way, but started in milliseconds. With
``fresh_python=True`` (or ``PRUNEKIT_TEST_FRESH_PYTHON=1`` for every call) it is a new
interpreter, exactly what a user types.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

from prunekit.recipes.executor import KILL_AFTER_STAGE_ENV

SRC = str(Path(__file__).resolve().parents[1] / "src")
# what a run imports (missing ones are skipped); torch._dynamo is imported by the optimizers
_PRELOAD = ["torch", "torch._dynamo", "mnist1d.data", "sklearn.datasets", "sqlite3", "prunekit.cli",
            "prunekit.experiments.runner", "prunekit.experiments.sources",
            "prunekit.experiments.trackers", "prunekit.recipes.builtins", "prunekit.export",
            "prunekit.structured", "tqdm"]  # fmt: skip
_server = None


def _main(argv: list[str], kill_after: str | None) -> None:
    # runs in the forked process: the environment as a fresh process would get it
    os.environ.pop(KILL_AFTER_STAGE_ENV, None)
    if kill_after is not None:
        os.environ[KILL_AFTER_STAGE_ENV] = kill_after
    import threading

    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a killed process would leak
    tqdm.set_lock(threading.RLock())
    from prunekit.cli import main

    sys.exit(main(argv))


def _context():
    global _server
    if _server is None:
        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(_PRELOAD)
    return _server


def run_cli(
    argv: list[str],
    kill_after: str | None = None,
    *,
    fresh_python: bool | None = None,
    timeout: float = 300.0,
) -> int:
    """The return code of ``prunekit <argv>`` run in its own process (-9: killed)."""
    if fresh_python is None:
        fresh_python = os.environ.get("PRUNEKIT_TEST_FRESH_PYTHON") == "1"
    if fresh_python:
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop(KILL_AFTER_STAGE_ENV, None)
        if kill_after is not None:
            env[KILL_AFTER_STAGE_ENV] = kill_after
        cmd = [sys.executable, "-m", "prunekit.cli", *argv]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout)
        if done.returncode not in (0, -9):
            sys.stderr.write(done.stderr.decode(errors="replace"))
        return done.returncode
    process = _context().Process(target=_main, args=(argv, kill_after))
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"prunekit {' '.join(argv)}: no result in {timeout} s")
    return process.exitcode
