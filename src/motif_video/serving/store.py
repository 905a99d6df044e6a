"""The job store: one SQLite file (the standard library's) in the data folder; jobs outlive the process.

Design:

* Durable before the answer: `create` commits (WAL journal, `synchronous=FULL`) before the route replies, so an
  accepted job survives a `kill -9` the moment after.
* States: `queued` -> `in_progress` -> `completed` | `failed`; DELETE removes the row in any state.
* Claim, finish: `claim` moves the oldest queued job to `in_progress` and counts an attempt; `complete` and `fail`
  change only a job that is `in_progress` in that same attempt, so a job completes at most once even if a stale
  worker finishes late. `requeue_running` (at start) puts jobs a dead process was running back in the queue.
* An `events` table logs every transition (queued, started, requeued, completed, failed, deleted) with its attempt:
  the record that shows each job completed exactly once.
* One connection for the process, serialised by a lock (the routes' threads and the workers share it).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "jobs.sqlite3"
QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue and the list are in it
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,    -- percent
    prompt TEXT NOT NULL,
    settings TEXT NOT NULL,                 -- JSON: the resolved GenerationSettings
    has_image INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,              -- hash of the request, to tell a replay from a reused key
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


@dataclass(frozen=True)
class Job:
    """One row of `jobs`."""

    seq: int
    id: str
    status: str
    progress: int
    prompt: str
    settings: dict[str, Any]
    has_image: bool
    idempotency_key: str | None
    fingerprint: str
    attempts: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["settings"] = json.loads(values["settings"])
        values["has_image"] = bool(values["has_image"])
        return cls(**values)


class DuplicateKey(Exception):
    """`create` with an Idempotency-Key another job holds; `.job` is that job."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job = job


class JobStore:
    """The SQLite job store at `folder / jobs.sqlite3` (created on first use)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # committed means on disk, not only in the OS cache
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the process lock; BEGIN IMMEDIATE takes the write lock at once."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, job_id: str, kind: str, attempt: int) -> None:
        db.execute(
            "INSERT INTO events (job_id, kind, attempt, at) VALUES (?, ?, ?, ?)", (job_id, kind, attempt, time.time())
        )

    # ------------------------------------------------------------------------------------------------ submitting
    def create(
        self, job_id: str, prompt: str, settings: dict[str, Any], has_image: bool, key: str | None, fingerprint: str
    ) -> Job:
        """Queue a job and commit it; DuplicateKey when `key` is already taken (the caller compares fingerprints)."""
        with self._tx() as db:
            if key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
                if row is not None:
                    raise DuplicateKey(Job.from_row(row))
            db.execute(
                "INSERT INTO jobs (id, status, prompt, settings, has_image, idempotency_key, fingerprint, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, prompt, json.dumps(settings), int(has_image), key, fingerprint, time.time()),
            )
            self._event(db, job_id, QUEUED, 0)
            return Job.from_row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def by_key(self, key: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else Job.from_row(row)

    # ------------------------------------------------------------------------------------------------ reading
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def status(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def page(self, limit: int, after: str | None = None, newest_first: bool = True) -> tuple[list[Job], bool]:
        """Up to `limit` jobs in submission order (newest first by default) after the job `after`; and whether more
        follow. LookupError when `after` names no job."""
        op, order = ("<", "DESC") if newest_first else (">", "ASC")
        with self._lock:
            where, args = "", []
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise LookupError(after)
                where, args = f"WHERE seq {op} ?", [row[0]]
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY seq {order} LIMIT ?", (*args, limit + 1))
            jobs = [Job.from_row(r) for r in rows.fetchall()]
        return jobs[:limit], len(jobs) > limit

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {QUEUED: 0, IN_PROGRESS: 0, COMPLETED: 0, FAILED: 0, **{r[0]: r[1] for r in rows}}

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM jobs").fetchall()}

    def events(self, job_id: str | None = None) -> list[tuple[str, str, int]]:
        """(job id, kind, attempt) in the order they happened; of one job or of all."""
        query, args = "SELECT job_id, kind, attempt FROM events", ()
        if job_id is not None:
            query, args = query + " WHERE job_id = ?", (job_id,)
        with self._lock:
            return [tuple(r) for r in self._db.execute(query + " ORDER BY seq", args).fetchall()]

    # ------------------------------------------------------------------------------------------------ running
    def claim(self) -> Job | None:
        """The oldest queued job, now `in_progress` with one more attempt; None when the queue is empty."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = ?, progress = 0, attempts = attempts + 1, started_at = ? WHERE id = ?",
                (IN_PROGRESS, time.time(), row[0]),
            )
            job = Job.from_row(db.execute("SELECT * FROM jobs WHERE id = ?", (row[0],)).fetchone())
            self._event(db, job.id, "started", job.attempts)
            return job

    def set_progress(self, job: Job, percent: int) -> bool:
        """Record progress of a running attempt; False when the job is gone or no longer this attempt's."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND status = ? AND attempts = ?",
                (percent, job.id, IN_PROGRESS, job.attempts),
            ).rowcount
        return changed == 1

    def complete(self, job: Job) -> bool:
        return self._finish(job, COMPLETED, None)

    def fail(self, job: Job, error: str) -> bool:
        return self._finish(job, FAILED, error)

    def _finish(self, job: Job, status: str, error: str | None) -> bool:
        """End one attempt; only the attempt that is running can, and only once (False otherwise)."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, progress = CASE WHEN ? THEN 100 ELSE progress END, completed_at = ?,"
                " error = ? WHERE id = ? AND status = ? AND attempts = ?",
                (status, status == COMPLETED, time.time(), error, job.id, IN_PROGRESS, job.attempts),
            ).rowcount
            if changed:
                self._event(db, job.id, status, job.attempts)
        return changed == 1

    def requeue_running(self) -> list[str]:
        """Jobs left `in_progress` by a process that died go back to the queue, in their place; their ids."""
        with self._tx() as db:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE status = ?", (IN_PROGRESS,)).fetchall()
            db.execute("UPDATE jobs SET status = ?, progress = 0 WHERE status = ?", (QUEUED, IN_PROGRESS))
            for job_id, attempts in rows:
                self._event(db, job_id, "requeued", attempts)
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> Job | None:
        """Remove a job in any state (a running one stops at its next step); the job as it was, or None."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._event(db, job_id, "deleted", row["attempts"])
        return Job.from_row(row)
