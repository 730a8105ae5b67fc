"""The SQLite job queue, on real database files: dedupe, claim order, back-off, failures, crash recovery,
concurrent claimers in other processes, odd file names and a corrupt database."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from svdaemon.errors import QueueError, StartupError
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import (
    DB_NAME,
    SCHEMA_VERSION,
    EnqueueResult,
    ErrorKind,
    Job,
    JobQueue,
    JobState,
    backoff_s,
)
from svdaemon.owner import current_owner

from doubles import from_exited_process

pytestmark = pytest.mark.integration

OWNER = "test-host:1:0"
FIRST = Fingerprint(size=100, mtime_ns=1_000, inode=7)
CHANGED = Fingerprint(size=120, mtime_ns=2_000, inode=7)


class FakeClock:
    """A clock the test moves by hand, so back-off is checked exactly and without waiting."""

    def __init__(self, now_s: float = 1_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock):
    with JobQueue.open(tmp_path / "state", clock=clock) as opened:
        yield opened


def claim_only(queue: JobQueue, path: Path, fingerprint: Fingerprint = FIRST) -> Job:
    queue.enqueue(path, fingerprint)
    job = queue.claim(OWNER)
    assert job is not None and job.path == path
    return job


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n) for n in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert backoff_s(50) == 3600.0


def test_new_queue_has_schema_version_and_passes_integrity_check(queue: JobQueue):
    assert queue.schema_version() == SCHEMA_VERSION == 1
    assert queue.integrity_ok()
    assert queue.counts() == dict.fromkeys(JobState, 0)


def test_same_path_and_fingerprint_twice_makes_one_job(queue: JobQueue, tmp_path: Path):
    path = tmp_path / "a.wav"
    assert queue.enqueue(path, FIRST) is EnqueueResult.ADDED
    assert queue.enqueue(path, FIRST) is EnqueueResult.UNCHANGED
    assert queue.counts()[JobState.QUEUED] == 1


@pytest.mark.parametrize("end", ["finish", "fail"])
def test_changed_fingerprint_requeues_a_done_or_failed_file(queue: JobQueue, tmp_path: Path, end: str):
    path = tmp_path / "a.wav"
    job = claim_only(queue, path)
    if end == "finish":
        queue.finish(job)
    else:
        queue.fail(job, "cannot decode", ErrorKind.BAD_FILE, max_attempts=1)
    assert queue.enqueue(path, FIRST) is EnqueueResult.UNCHANGED

    assert queue.enqueue(path, CHANGED) is EnqueueResult.REQUEUED
    again = queue.get(path)
    assert again.state is JobState.QUEUED
    assert (again.fingerprint, again.attempts, again.last_error) == (CHANGED, 0, None)


def test_claim_takes_highest_priority_then_oldest(queue: JobQueue, clock: FakeClock, tmp_path: Path):
    for name, priority in [("old-low", 0), ("old-high", 5), ("new-high", 5), ("new-low", 0)]:
        queue.enqueue(tmp_path / name, FIRST, priority=priority)
        clock.now_s += 1
    claimed = [queue.claim(OWNER).path.name for _ in range(4)]
    assert claimed == ["old-high", "new-high", "old-low", "new-low"]
    assert queue.claim(OWNER) is None


def test_claim_marks_the_job_running_for_its_owner(queue: JobQueue, tmp_path: Path):
    job = claim_only(queue, tmp_path / "a.wav")
    assert (job.state, job.owner) == (JobState.RUNNING, OWNER)
    assert queue.get(job.path) == job


def test_bad_file_backs_off_then_fails_for_good_until_it_changes(
    queue: JobQueue, clock: FakeClock, tmp_path: Path
):
    path = tmp_path / "bad.wav"
    job = claim_only(queue, path)
    assert queue.fail(job, "bad.wav: not audio", ErrorKind.BAD_FILE, max_attempts=3) is JobState.QUEUED
    assert queue.claim(OWNER) is None  # backing off
    clock.now_s += 29.9
    assert queue.claim(OWNER) is None
    clock.now_s += 0.1
    job = queue.claim(OWNER)
    assert job.attempts == 1
    assert queue.fail(job, "bad.wav: not audio", ErrorKind.BAD_FILE, max_attempts=3) is JobState.QUEUED
    clock.now_s += 59.9
    assert queue.claim(OWNER) is None
    clock.now_s += 0.1
    job = queue.claim(OWNER)
    assert queue.fail(job, "bad.wav: not audio", ErrorKind.BAD_FILE, max_attempts=3) is JobState.FAILED

    failed = queue.get(path)
    assert (failed.state, failed.attempts, failed.error_kind) == (JobState.FAILED, 3, ErrorKind.BAD_FILE)
    assert failed.last_error == "bad.wav: not audio"
    clock.now_s += 1e6
    assert queue.enqueue(path, FIRST) is EnqueueResult.UNCHANGED
    assert queue.claim(OWNER) is None
    assert queue.enqueue(path, CHANGED) is EnqueueResult.REQUEUED
    assert queue.claim(OWNER).attempts == 0


def test_environment_faults_back_off_but_never_count(queue: JobQueue, clock: FakeClock, tmp_path: Path):
    job = claim_only(queue, tmp_path / "a.wav")
    for delay in (30.0, 60.0, 120.0, 240.0, 480.0):
        assert queue.fail(job, "CUDA out of memory", ErrorKind.ENVIRONMENT, max_attempts=1) is JobState.QUEUED
        clock.now_s += delay - 0.5
        assert queue.claim(OWNER) is None
        clock.now_s += 0.5
        job = queue.claim(OWNER)
        assert job.attempts == 0
    assert job.environment_faults == 5
    queue.finish(job)
    assert queue.get(job.path).state is JobState.DONE


def test_requeue_does_not_count_and_can_wait_for_a_changed_file(
    queue: JobQueue, clock: FakeClock, tmp_path: Path
):
    job = claim_only(queue, tmp_path / "a.wav")
    assert queue.requeue(job)
    job = queue.claim(OWNER)
    assert job.attempts == 0
    assert queue.requeue(job, fingerprint=CHANGED, delay_s=5.0)
    assert queue.claim(OWNER) is None
    clock.now_s += 5.0
    assert queue.claim(OWNER).fingerprint == CHANGED


def test_outcome_of_a_lost_claim_is_not_recorded(queue: JobQueue, tmp_path: Path):
    path = tmp_path / "a.wav"
    job = claim_only(queue, path)
    assert queue.enqueue(path, CHANGED) is EnqueueResult.REQUEUED  # replaced while being transcribed
    assert not queue.finish(job)
    assert queue.fail(job, "boom", ErrorKind.BAD_FILE, max_attempts=1) is None
    assert queue.get(path).state is JobState.QUEUED


def test_skip_records_the_reason(queue: JobQueue, tmp_path: Path):
    job = claim_only(queue, tmp_path / "a.wav")
    assert queue.skip(job, "sidecars exist and are newer")
    skipped = queue.get(job.path)
    assert (skipped.state, skipped.last_error) == (JobState.SKIPPED, "sidecars exist and are newer")


def test_forget_drops_the_row(queue: JobQueue, tmp_path: Path):
    job = claim_only(queue, tmp_path / "gone.wav")
    assert queue.forget(job.path)
    assert queue.get(job.path) is None
    assert not queue.forget(job.path)
    assert not queue.finish(job)


def test_recover_requeues_jobs_of_dead_owners_without_counting(queue: JobQueue, tmp_path: Path):
    for name in ("a.wav", "b.wav", "c.wav"):
        queue.enqueue(tmp_path / name, FIRST)
    crashed = queue.claim(from_exited_process("current_owner()"))
    unreal = queue.claim(f"{current_owner().split(':')[0]}:999999999:0")
    alive = queue.claim(current_owner())

    assert queue.recover() == 2
    assert {queue.get(job.path).state for job in (crashed, unreal)} == {JobState.QUEUED}
    assert {queue.get(job.path).attempts for job in (crashed, unreal)} == {0}
    assert queue.get(alive.path) == alive
    assert queue.finish(alive)


def test_recover_asks_the_given_liveness_check(queue: JobQueue, tmp_path: Path):
    queue.enqueue(tmp_path / "a.wav", FIRST)
    job = queue.claim("worker-1")
    assert queue.recover(live_owners=lambda owner: owner == "worker-1") == 0
    assert queue.recover(live_owners=lambda owner: False) == 1
    assert queue.get(job.path).state is JobState.QUEUED


def test_retry_and_bump_report_unknown_paths(queue: JobQueue, clock: FakeClock, tmp_path: Path):
    a, b, c, unknown = (tmp_path / name for name in ("a.wav", "b.wav", "c.wav", "unknown.wav"))
    for path in (a, b, c):
        queue.enqueue(path, FIRST, priority=3)
        clock.now_s += 1
    job = queue.claim(OWNER)
    queue.fail(job, "bad", ErrorKind.BAD_FILE, max_attempts=1)

    assert queue.bump([c, unknown, b]) == [unknown]
    assert [queue.claim(OWNER).path for _ in range(2)] == [c, b]
    assert queue.retry([a, unknown]) == [unknown]
    retried = queue.get(a)
    assert (retried.state, retried.attempts, retried.last_error) == (JobState.QUEUED, 0, None)
    assert queue.claim(OWNER).path == a


def test_retry_all_failed(queue: JobQueue, tmp_path: Path):
    for name in ("a.wav", "b.wav", "c.wav"):
        queue.enqueue(tmp_path / name, FIRST)
    for _ in range(2):
        queue.fail(queue.claim(OWNER), "bad", ErrorKind.BAD_FILE, max_attempts=1)
    queue.finish(queue.claim(OWNER))
    assert queue.retry_all_failed() == 2
    assert queue.counts() == {**dict.fromkeys(JobState, 0), JobState.QUEUED: 2, JobState.DONE: 1}
    assert [job.path.name for job in queue.jobs(states=[JobState.DONE])] == ["c.wav"]
    assert len(queue.jobs(limit=2)) == 2


def test_non_utf8_file_name_round_trips(queue: JobQueue, tmp_path: Path):
    path = tmp_path / os.fsdecode(b"caf\xe9.wav")
    path.write_bytes(b"not really audio")
    fingerprint = Fingerprint.of(path)
    assert fingerprint.size == 16
    queue.enqueue(path, fingerprint, root=tmp_path)
    job = queue.claim(OWNER)
    assert job.path == path and os.fsencode(job.path).endswith(b"caf\xe9.wav")
    assert job.root == tmp_path
    assert Fingerprint.of(job.path) == job.fingerprint
    assert queue.get(path) == job


def test_queue_survives_reopening(tmp_path: Path, clock: FakeClock):
    with JobQueue.open(tmp_path, clock=clock) as queue:
        queue.enqueue(tmp_path / "a.wav", FIRST)
        queue.claim(OWNER)
    with JobQueue.open(tmp_path, clock=clock) as queue:
        assert queue.counts()[JobState.RUNNING] == 1
        assert queue.schema_version() == SCHEMA_VERSION
        assert queue.integrity_ok()


def test_garbage_database_is_moved_aside_and_a_fresh_one_works(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    db = tmp_path / DB_NAME
    garbage = b"this is not a database" * 100
    db.write_bytes(garbage)
    (tmp_path / f"{DB_NAME}-wal").write_bytes(b"stale wal")  # must not leak into the fresh database
    with (
        caplog.at_level(logging.WARNING, logger="svdaemon.jobs"),
        JobQueue.open(tmp_path, clock=clock) as queue,
    ):
        assert queue.enqueue(tmp_path / "a.wav", FIRST) is EnqueueResult.ADDED
        assert queue.integrity_ok()
    [aside] = tmp_path.glob(f"{DB_NAME}.corrupt-*[0-9]Z")
    assert aside.read_bytes() == garbage
    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert str(db) in warning and str(aside) in warning


def test_damaged_pages_are_caught_by_the_check_at_open(tmp_path: Path, clock: FakeClock):
    with JobQueue.open(tmp_path, clock=clock) as queue:
        for n in range(500):
            queue.enqueue(tmp_path / f"recording-{n:04}.wav", FIRST)
    db = tmp_path / DB_NAME
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = 4096
    data = bytearray(db.read_bytes())
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)
    db.write_bytes(bytes(data))

    with JobQueue.open(tmp_path, clock=clock) as queue:
        assert queue.counts() == dict.fromkeys(JobState, 0)
        assert queue.integrity_ok()
    assert len(list(tmp_path.glob(f"{DB_NAME}.corrupt-*[0-9]Z"))) == 1


def test_database_from_a_newer_version_is_refused(tmp_path: Path, clock: FakeClock):
    JobQueue.open(tmp_path, clock=clock).close()
    with sqlite3.connect(tmp_path / DB_NAME) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StartupError, match="newer than this svdaemon"):
        JobQueue.open(tmp_path, clock=clock)


CLAIMER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from svdaemon.jobs import JobQueue

    with JobQueue.open(Path(sys.argv[1])) as queue:
        print("ready", flush=True)
        sys.stdin.readline()
        while (job := queue.claim(sys.argv[2])) is not None:
            print(job.id, flush=True)
            queue.finish(job)
    """
)


def test_concurrent_claimers_never_take_the_same_job(tmp_path: Path):
    """Two other processes and two queue objects in this one claim from one file: each job exactly once."""
    with JobQueue.open(tmp_path) as here, JobQueue.open(tmp_path) as also_here:
        for n in range(200):
            here.enqueue(tmp_path / f"{n}.wav", FIRST)
        claimers = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIMER, str(tmp_path), f"proc-{n}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(2)
        ]
        for claimer in claimers:
            assert claimer.stdout.readline() == "ready\n"
        for claimer in claimers:
            claimer.stdin.write("go\n")
            claimer.stdin.flush()
        claimed_here = []
        while True:
            job = (here, also_here)[len(claimed_here) % 2].claim(f"here-{len(claimed_here) % 2}")
            if job is None:
                break
            claimed_here.append(job.id)
        claimed_there = []
        for claimer in claimers:
            output, _ = claimer.communicate(timeout=60)
            assert claimer.returncode == 0
            claimed_there += [int(line) for line in output.split()]

        claimed = claimed_here + claimed_there
        assert sorted(claimed) == sorted(job.id for job in here.jobs())
        assert len(claimed) == len(set(claimed)) == 200
        assert here.counts()[JobState.QUEUED] == 0
        assert here.integrity_ok()


def test_a_done_job_keeps_its_note_and_drops_an_earlier_try_s_error(queue, clock, tmp_path):
    path = tmp_path / "talk.mp3"
    queue.enqueue(path, FIRST)
    queue.fail(queue.claim(OWNER), "talk.mp3: corrupt data", ErrorKind.BAD_FILE, max_attempts=3)
    clock.now_s += 3600  # past the back-off
    queue.finish(queue.claim(OWNER), "kept talk.srt (edited since svdaemon wrote it; overwrite: ours)")
    done = queue.get(path)
    assert done.state is JobState.DONE and done.error_kind is None
    assert done.last_error == "kept talk.srt (edited since svdaemon wrote it; overwrite: ours)"


def test_the_recently_failed_come_newest_first_and_a_read_error_is_the_queue_s_own(queue, clock, tmp_path):
    for name in ("a.wav", "b.wav", "c.wav"):
        queue.enqueue(tmp_path / name, FIRST)
    for _ in range(3):
        clock.now_s += 10
        queue.fail(queue.claim(OWNER), "corrupt data", ErrorKind.BAD_FILE, max_attempts=1)
    assert [job.path.name for job in queue.recently_failed(2)] == ["c.wav", "b.wav"]
    queue._connection.execute("DROP TABLE jobs")  # a database that no longer holds the queue
    with pytest.raises(QueueError, match=r"cannot read the job queue .*jobs\.sqlite3: no such table"):
        queue.counts()
