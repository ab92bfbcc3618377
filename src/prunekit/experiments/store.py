"""The results database: one SQLite file (WAL mode) at the output root, one row per run.

Parallel sweep workers may write at once: every write is one short transaction with a busy timeout,
so concurrent writers wait instead of failing and nothing is lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunekit.core.errors import DiskFullError, FileFormatError
from prunekit.core.serialization import check_write_path, make_dirs

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config_hash TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT,
    run_dir TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash);
"""


def _is_lock(err: sqlite3.DatabaseError) -> bool:
    message = str(err).lower()
    return isinstance(err, sqlite3.OperationalError) and ("locked" in message or "busy" in message)


class ResultsStore:
    """Records runs (config, hash, status, metrics) in ``<root>/results.sqlite``."""

    def __init__(self, root: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = Path(root) / "results.sqlite"
        make_dirs(self.path.parent)
        self.timeout = timeout
        self._retry(self._setup)

    def _setup(self) -> None:
        with self._connect() as db:
            # Switching to WAL needs an exclusive lock: only do it when not in WAL mode yet.
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _retry(self, fn: Any, *args: Any) -> Any:
        """Run ``fn``, retrying while SQLite reports a lock the busy handler does not wait for
        (e.g. several processes creating the database or switching it to WAL at once)."""
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as err:
                if not _is_lock(err) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite would follow a planted link
            check_write_path(f"{self.path}{suffix}")
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.DatabaseError as err:
            raise self._corrupt(err) from None
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            yield db
        except sqlite3.DatabaseError as err:
            if _is_lock(err):
                raise  # _retry waits for locks
            raise self._corrupt(err) from None
        finally:
            db.close()

    def _corrupt(self, err: sqlite3.DatabaseError) -> FileFormatError | DiskFullError:
        if "disk is full" in str(err).lower():
            return DiskFullError(self.path)
        return FileFormatError(
            self.path,
            f"not a usable SQLite results database ({err}); move it away and run again to start "
            "a new one (each finished run keeps its result.json)",
        )

    def record(
        self,
        run_id: str,
        config_hash: str,
        config: dict[str, Any],
        status: str,
        metrics: dict[str, Any] | None = None,
        run_dir: str | None = None,
        name: str | None = None,
    ) -> None:
        """Insert or update one run (one transaction)."""
        self._retry(self._record, run_id, config_hash, config, status, metrics, run_dir, name)

    def _record(
        self,
        run_id: str,
        config_hash: str,
        config: dict[str, Any],
        status: str,
        metrics: dict[str, Any] | None,
        run_dir: str | None,
        name: str | None,
    ) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                """INSERT INTO runs (run_id, config_hash, name, status, config, metrics, run_dir, created, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status=excluded.status,
                       metrics=COALESCE(excluded.metrics, runs.metrics), run_dir=excluded.run_dir,
                       name=COALESCE(excluded.name, runs.name), updated=excluded.updated""",
                (
                    run_id,
                    config_hash,
                    name,
                    status,
                    json.dumps(config, sort_keys=True),
                    json.dumps(metrics, sort_keys=True) if metrics is not None else None,
                    run_dir,
                    now,
                    now,
                ),
            )
            db.execute("COMMIT")

    def runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs (optionally with one status), oldest first, configs and metrics decoded."""
        query = "SELECT run_id, config_hash, name, status, config, metrics, run_dir, created, updated FROM runs"
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)

        def fetch() -> list[tuple]:
            with self._connect() as db:
                return db.execute(query + " ORDER BY created, run_id", args).fetchall()

        rows = self._retry(fetch)
        keys = [
            "run_id",
            "config_hash",
            "name",
            "status",
            "config",
            "metrics",
            "run_dir",
            "created",
            "updated",
        ]
        out = []
        for row in rows:
            item = dict(zip(keys, row))
            try:
                item["config"] = json.loads(item["config"])
                item["metrics"] = json.loads(item["metrics"]) if item["metrics"] else None
            except (TypeError, ValueError, RecursionError) as err:
                raise FileFormatError(
                    self.path, f"run {item['run_id']!r} holds corrupt JSON ({err})"
                ) from None
            out.append(item)
        return out

    def get(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.runs() if r["run_id"] == run_id), None)
