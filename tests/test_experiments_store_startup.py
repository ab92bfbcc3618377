"""Worker processes that create the results database at the same moment lose nothing."""

from __future__ import annotations

import multiprocessing as mp
import time

from prunekit.experiments.store import ResultsStore


def _worker(root: str, worker: int, start: float, count: int) -> None:
    time.sleep(max(0.0, start - time.time()))  # all open the fresh database at once
    store = ResultsStore(root)
    for i in range(count):
        store.record(f"w{worker}-{i}", "h", {"w": worker}, "done", {"i": i})


def test_simultaneous_creation_and_writes(tmp_path):
    ctx = mp.get_context("spawn")
    start = time.time() + 2.5
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, start, 10)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rows = ResultsStore(tmp_path).runs()
    assert sorted(r["run_id"] for r in rows) == sorted(
        f"w{w}-{i}" for w in range(3) for i in range(10)
    )
