"""The durable priority queue: one SQLite row per source file, surviving crashes, restarts and bad files.

Only this module speaks SQL, behind `JobQueue`, so a shared server-side queue could replace SQLite without
touching the worker. The daemon and the CLI share `state_dir/jobs.sqlite3`: WAL, a busy timeout and
`BEGIN IMMEDIATE` for every write make one writer at a time wait instead of fail. Paths are stored as the
bytes `os.fsencode` gives, so names that are not UTF-8 come back unchanged. Times are float seconds from the
injected clock.
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

from svdaemon.errors import QueueError, StartupError
from svdaemon.fingerprint import Fingerprint
from svdaemon.owner import owner_is_alive

log = logging.getLogger(__name__)

DB_NAME = "jobs.sqlite3"
BUSY_TIMEOUT_S = 5.0
BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0

# Migration N (1-based) brings the schema from version N-1 to N; PRAGMA user_version records the version.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'skipped')),
            attempts INTEGER NOT NULL DEFAULT 0,
            environment_faults INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            error_kind TEXT CHECK (error_kind IN ('bad_file', 'environment')),
            created_at_s REAL NOT NULL,
            updated_at_s REAL NOT NULL,
            finished_at_s REAL,
            not_before_s REAL NOT NULL DEFAULT 0,
            owner TEXT,
            root BLOB
        )""",
        "CREATE INDEX jobs_claim_order ON jobs (state, priority DESC, created_at_s, id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# A retried job starts over: no attempts, no error, due at once.
_RETRY = (
    "UPDATE jobs SET state = 'queued', attempts = 0, environment_faults = 0, last_error = NULL,"
    " error_kind = NULL, finished_at_s = NULL, not_before_s = 0, owner = NULL, updated_at_s = ?"
)


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class ErrorKind(enum.Enum):
    """Bad files count against the file; environment faults (OOM, device lost, disk full) never do."""

    BAD_FILE = "bad_file"
    ENVIRONMENT = "environment"


class EnqueueResult(enum.Enum):
    ADDED = "added"
    REQUEUED = "requeued"  # known path, changed content: a fresh job, attempts reset
    UNCHANGED = "unchanged"  # known path and fingerprint, whatever its state


@dataclass(frozen=True)
class Job:
    id: int
    path: Path
    fingerprint: Fingerprint
    priority: int
    state: JobState
    attempts: int
    environment_faults: int
    last_error: str | None  # for a skipped job: why it was skipped
    error_kind: ErrorKind | None
    created_at_s: float
    updated_at_s: float
    finished_at_s: float | None
    not_before_s: float
    owner: str | None
    root: Path | None


def backoff_s(failures: int) -> float:
    """Delay before the next try after `failures` failures in a row: 30 s, 60 s, 120 s … at most an hour."""
    return min(BACKOFF_BASE_S * 2 ** max(failures - 1, 0), BACKOFF_CAP_S)


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        path=Path(os.fsdecode(row["path"])),
        fingerprint=Fingerprint(row["size"], row["mtime_ns"], row["inode"]),
        priority=row["priority"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        environment_faults=row["environment_faults"],
        last_error=row["last_error"],
        error_kind=ErrorKind(row["error_kind"]) if row["error_kind"] else None,
        created_at_s=row["created_at_s"],
        updated_at_s=row["updated_at_s"],
        finished_at_s=row["finished_at_s"],
        not_before_s=row["not_before_s"],
        owner=row["owner"],
        root=Path(os.fsdecode(row["root"])) if row["root"] is not None else None,
    )


def _connect(db_path: Path) -> sqlite3.Connection:
    # Autocommit mode: this module opens every transaction itself, writes with BEGIN IMMEDIATE.
    connection = sqlite3.connect(
        db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    connection.row_factory = sqlite3.Row
    return connection


def _quick_check(connection: sqlite3.Connection) -> bool:
    return [row[0] for row in connection.execute("PRAGMA quick_check")] == ["ok"]


def _move_aside(db_path: Path, now_s: float) -> Path:
    """Keep a corrupt database (and its WAL) for a post-mortem instead of deleting what a user may need."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_s)) + f".{int(now_s * 1000) % 1000:03d}Z"
    aside = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = db_path.with_name(db_path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    return aside


class JobQueue:
    """The queue in `state_dir/jobs.sqlite3`; one object may be shared by the daemon's threads.

    Transitions of a claimed job (`finish`, `skip`, `fail`, `requeue`) take the `Job` that `claim` returned
    and apply only while that claim still holds (running, same owner, same fingerprint): a job requeued
    meanwhile because its file changed, or taken back by `recover`, is not marked with a stale outcome.
    They return whether the claim still held.
    """

    def __init__(self, connection: sqlite3.Connection, db_path: Path, clock: Callable[[], float]) -> None:
        self._connection = connection
        self._lock = threading.RLock()
        self.db_path = db_path
        self._clock = clock

    @classmethod
    def open(cls, state_dir: Path, clock: Callable[[], float] = time.time) -> JobQueue:
        """Open (or create) the queue; a corrupt file is moved aside with a warning and a fresh one started."""
        state_dir.mkdir(parents=True, exist_ok=True)
        db_path = state_dir / DB_NAME
        try:
            try:
                connection = cls._open_checked(db_path)
            except sqlite3.OperationalError:
                raise  # busy, locked, unreadable: not corruption, so nothing is moved
            except sqlite3.DatabaseError as error:
                aside = _move_aside(db_path, clock())
                log.warning(
                    "job queue %s is corrupt (%s); moved it to %s and started an empty one",
                    db_path,
                    error,
                    aside,
                )
                connection = cls._open_checked(db_path)
        except sqlite3.OperationalError as error:
            raise StartupError(f"cannot open the job queue {db_path}: {error}") from error
        queue = cls(connection, db_path, clock)
        try:
            queue._migrate()
        except BaseException:
            queue.close()
            raise
        return queue

    @staticmethod
    def _open_checked(db_path: Path) -> sqlite3.Connection:
        connection = _connect(db_path)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            if not _quick_check(connection):
                raise sqlite3.DatabaseError("quick_check failed")
        except BaseException:
            connection.close()
            raise
        return connection

    def _migrate(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StartupError(
                    f"job queue {self.db_path} has schema version {version}, newer than this svdaemon's "
                    f"{SCHEMA_VERSION}: upgrade svdaemon"
                )
            for number, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes the write lock up front: a read that turns into a write cannot
        deadlock against another process, it waits for the busy timeout instead."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _read(self, sql: str, parameters: Sequence[object] = ()) -> list[sqlite3.Row]:
        """Rows of a query; SQLite's own error becomes a QueueError, so no caller needs to know it is SQL."""
        with self._lock:
            try:
                return self._connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise QueueError(f"cannot read the job queue {self.db_path}: {error}") from error

    def schema_version(self) -> int:
        return self._read("PRAGMA user_version")[0][0]

    def integrity_ok(self) -> bool:
        return [row[0] for row in self._read("PRAGMA integrity_check")] == ["ok"]

    def enqueue(
        self, path: Path, fingerprint: Fingerprint, priority: int = 0, root: Path | None = None
    ) -> EnqueueResult:
        """Queue a file once per content: a known fingerprint changes nothing (failed stays failed, done stays
        done); a changed one makes a fresh job, attempts and errors reset, aged from now."""
        now = self._clock()
        key = os.fsencode(path)
        stored_root = os.fsencode(root) if root is not None else None
        with self._write() as db:
            row = db.execute("SELECT size, mtime_ns, inode FROM jobs WHERE path = ?", (key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO jobs (path, size, mtime_ns, inode, priority, state, created_at_s, updated_at_s,"
                    " root) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                    (key, *astuple(fingerprint), priority, now, now, stored_root),
                )
                return EnqueueResult.ADDED
            if Fingerprint(*row) == fingerprint:
                return EnqueueResult.UNCHANGED
            db.execute(
                "UPDATE jobs SET size = ?, mtime_ns = ?, inode = ?, priority = ?, state = 'queued', attempts = 0,"
                " environment_faults = 0, last_error = NULL, error_kind = NULL, created_at_s = ?,"
                " updated_at_s = ?, finished_at_s = NULL, not_before_s = 0, owner = NULL, root = ?"
                " WHERE path = ?",
                (*astuple(fingerprint), priority, now, now, stored_root, key),
            )
            return EnqueueResult.REQUEUED

    def claim(self, owner: str) -> Job | None:
        """Mark the next due queued job (highest priority, then oldest) running for `owner` and return it."""
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, updated_at_s = ? WHERE id = ("
                " SELECT id FROM jobs WHERE state = 'queued' AND not_before_s <= ?"
                " ORDER BY priority DESC, created_at_s, id LIMIT 1) RETURNING *",
                (owner, now, now),
            ).fetchone()
        return _job_from_row(row) if row is not None else None

    def finish(self, job: Job, note: str | None = None) -> bool:
        """End a claimed job done; `note` is what `queue` shows beside it (a sidecar kept as the user's).
        An earlier try's error goes: it no longer says anything about the file."""
        return self._end_claim(
            job,
            "state = 'done', finished_at_s = :now, environment_faults = 0, last_error = :note,"
            " error_kind = NULL",
            note=note,
        )

    def skip(self, job: Job, reason: str) -> bool:
        """End a claimed job without transcribing it (e.g. its sidecars exist and are newer)."""
        return self._end_claim(
            job,
            "state = 'skipped', finished_at_s = :now, last_error = :reason, error_kind = NULL",
            reason=reason,
        )

    def requeue(self, job: Job, fingerprint: Fingerprint | None = None, delay_s: float = 0.0) -> bool:
        """Put a claimed job back without counting an attempt (pause, stop, source changed mid-run).

        A file that changed under the worker is requeued with its new `fingerprint` and a `delay_s` (the
        settle time), so a file still being written is not claimed again at once.
        """
        new = fingerprint or job.fingerprint
        return self._end_claim(
            job,
            "state = 'queued', owner = NULL, not_before_s = :now + :delay,"
            " size = :size, mtime_ns = :mtime_ns, inode = :inode",
            delay=delay_s,
            size=new.size,
            mtime_ns=new.mtime_ns,
            inode=new.inode,
        )

    def fail(self, job: Job, error: str, kind: ErrorKind, max_attempts: int) -> JobState | None:
        """Record a failed try; return the job's new state (None: the claim no longer held).

        A bad file counts an attempt and is retried with back-off until `max_attempts`, then stays failed
        until its fingerprint changes. An environment fault is retried with its own back-off and never counts.
        """
        if kind is ErrorKind.BAD_FILE:
            attempts, faults = job.attempts + 1, job.environment_faults
            state = JobState.FAILED if attempts >= max_attempts else JobState.QUEUED
            delay = backoff_s(attempts)
        else:
            attempts, faults = job.attempts, job.environment_faults + 1
            state, delay = JobState.QUEUED, backoff_s(faults)
        held = self._end_claim(
            job,
            "state = :state, attempts = :attempts, environment_faults = :faults, last_error = :error,"
            " error_kind = :kind, owner = NULL, not_before_s = :now + :delay,"
            " finished_at_s = CASE WHEN :state = 'failed' THEN :now END",
            state=state.value,
            attempts=attempts,
            faults=faults,
            error=error,
            kind=kind.value,
            delay=delay,
        )
        return state if held else None

    def _end_claim(self, job: Job, assignments: str, **values: object) -> bool:
        parameters = {
            "now": self._clock(),
            "id": job.id,
            "owner": job.owner,
            "claimed_size": job.fingerprint.size,
            "claimed_mtime_ns": job.fingerprint.mtime_ns,
            "claimed_inode": job.fingerprint.inode,
            **values,
        }
        with self._write() as db:
            changed = db.execute(
                f"UPDATE jobs SET {assignments}, updated_at_s = :now WHERE id = :id AND state = 'running'"
                " AND owner = :owner AND size = :claimed_size AND mtime_ns = :claimed_mtime_ns"
                " AND inode = :claimed_inode",
                parameters,
            ).rowcount
        if not changed:
            log.info("job for %s was no longer held by %s; outcome not recorded", job.path, job.owner)
        return bool(changed)

    def forget(self, path: Path) -> bool:
        """Drop a file's row (the file is gone); a worker still holding it will find its claim lost."""
        with self._write() as db:
            return bool(db.execute("DELETE FROM jobs WHERE path = ?", (os.fsencode(path),)).rowcount)

    def recover(self, live_owners: Callable[[str], bool] | None = None) -> int:
        """At start: requeue every running job whose owner is gone, without counting an attempt (a crash is
        not the file's fault). Returns how many were requeued."""
        is_alive = live_owners or owner_is_alive
        with self._write() as db:
            owners = [row[0] for row in db.execute("SELECT DISTINCT owner FROM jobs WHERE state = 'running'")]
            dead = [owner for owner in owners if owner is None or not is_alive(owner)]
            requeued = 0
            for owner in dead:
                requeued += db.execute(
                    "UPDATE jobs SET state = 'queued', owner = NULL, updated_at_s = ?"
                    " WHERE state = 'running' AND owner IS ?",
                    (self._clock(), owner),
                ).rowcount
        if requeued:
            log.info("requeued %d job(s) left running by stopped processes", requeued)
        return requeued

    def retry(self, paths: Iterable[Path]) -> list[Path]:
        """Queue known files again from scratch (running ones are left alone); return the unknown paths."""
        now = self._clock()
        unknown = []
        with self._write() as db:
            for path in paths:
                known = db.execute("SELECT 1 FROM jobs WHERE path = ?", (os.fsencode(path),)).fetchone()
                if known is None:
                    unknown.append(path)
                    continue
                db.execute(_RETRY + " WHERE path = ? AND state != 'running'", (now, os.fsencode(path)))
        return unknown

    def retry_all_failed(self) -> int:
        with self._write() as db:
            return db.execute(_RETRY + " WHERE state = 'failed'", (self._clock(),)).rowcount

    def bump(self, paths: Sequence[Path]) -> list[Path]:
        """Move files to the front of the queue, the first named first; return the unknown paths."""
        now = self._clock()
        keys = [os.fsencode(path) for path in paths]
        with self._write() as db:
            top = db.execute("SELECT MAX(priority) FROM jobs WHERE state = 'queued'").fetchone()[0] or 0
            unknown = []
            for rank, (path, key) in enumerate(zip(paths, keys, strict=True)):
                changed = db.execute(
                    "UPDATE jobs SET priority = ?, updated_at_s = ? WHERE path = ?",
                    (top + len(paths) - rank, now, key),
                ).rowcount
                if not changed:
                    unknown.append(path)
        return unknown

    def get(self, path: Path) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE path = ?", (os.fsencode(path),))
        return _job_from_row(rows[0]) if rows else None

    def counts(self) -> dict[JobState, int]:
        counted = dict(self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {state: counted.get(state.value, 0) for state in JobState}

    def recently_failed(self, count: int) -> list[Job]:
        """The `count` jobs that failed most recently, the newest first (for the tray's notices)."""
        rows = self._read(
            "SELECT * FROM jobs WHERE state = 'failed' ORDER BY updated_at_s DESC, id DESC LIMIT ?", (count,)
        )
        return [_job_from_row(row) for row in rows]

    def jobs(self, states: Iterable[JobState] | None = None, limit: int | None = None) -> list[Job]:
        """Jobs in claim order (priority, then age), optionally only some states, at most `limit`."""
        sql, parameters = "SELECT * FROM jobs", []
        if states is not None:
            wanted = [state.value for state in states]
            sql += f" WHERE state IN ({', '.join('?' * len(wanted))})"
            parameters += wanted
        sql += " ORDER BY priority DESC, created_at_s, id"
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        return [_job_from_row(row) for row in self._read(sql, parameters)]
