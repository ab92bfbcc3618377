"""The SQLite results database: records, updates, and concurrent writers lose nothing."""

from __future__ import annotations

import multiprocessing as mp

from prunekit.experiments.store import ResultsStore


def _writer(root: str, worker: int, count: int) -> None:
    store = ResultsStore(root)
    for i in range(count):
        run_id = f"w{worker}-r{i}"
        store.record(run_id, f"hash{i}", {"worker": worker, "i": i}, "running")
        store.record(
            run_id, f"hash{i}", {"worker": worker, "i": i}, "done", metrics={"acc": i / count}
        )


def test_record_and_update(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", "h", {"x": 1}, "running", run_dir="runs/a", name="first")
    store.record("a", "h", {"x": 1}, "done", metrics={"acc": 0.9}, run_dir="runs/a")
    (run,) = store.runs()
    assert run["status"] == "done" and run["metrics"] == {"acc": 0.9} and run["name"] == "first"
    assert run["config"] == {"x": 1}
    assert store.runs(status="running") == []


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    workers, count = 4, 15
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    runs = ResultsStore(tmp_path).runs()
    assert len(runs) == workers * count
    assert all(r["status"] == "done" and r["metrics"] is not None for r in runs)
    import sqlite3

    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
