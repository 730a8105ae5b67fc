"""Issue 4's bad situations, end to end: the whole daemon, or the real worker where timing must be exact.

Most cases run against one real `svdaemon run` subprocess (tiny model, CPU) that starts under bad
conditions on purpose: garbage in its state DB, a watched root that does not exist yet, a root holding a
symbolic-link loop, and a root whose output folder cannot be made. Tests then add their own trouble while
it runs and end on what a user would see: sidecars or none, the job's row in the DB, the log line, and a
daemon that still answers `status`. Two cases need the worker caught at one exact point (a file replaced
mid-transcription, a disk that fills while a sidecar is written); they run the real Worker over a real
JobQueue and the real Pipeline in this process. Unit-level versions of each case live in test_watcher.py,
test_worker.py, test_jobs.py and test_sidecars.py; these prove the parts hold together.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from svdaemon.config import Config
from svdaemon.control import Command, ControlError, DaemonNotRunning, DaemonState, StatusSnapshot, request
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import ErrorKind, Job, JobQueue, JobState, backoff_s
from svdaemon.owner import current_owner
from svdaemon.pipeline import Pipeline
from svdaemon.synthetic_speech import build_track
from svdaemon.worker import Worker

from doubles import wait_for
from media import write_audio

pytestmark = pytest.mark.integration

SETTLE_S = 0.5
FORMATS = ("txt", "srt", "json")
START_TIMEOUT_S = 120.0  # model load on a shared CPU
WORK_TIMEOUT_S = 60.0  # a few seconds of speech through the tiny model, with a margin for a busy machine
NOT_UTF8_NAME = os.fsdecode(b"caf\xe9.wav")
BLOCKED_OUTPUT_DIR = Path("blocker", "out")  # under the scene's base; "blocker" is a regular file


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return build_track([0.3, "The ferry leaves the harbour at seven", 0.4]).samples


# ---- the daemon, started under bad conditions ---------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """The running daemon and its folders; each root is there for one kind of trouble."""

    process: subprocess.Popen
    base: Path
    state_dir: Path
    inbox: Path  # plain root; at start it holds old.wav (newer sidecars exist) and pending.wav (none)
    looped: Path  # holds symlink loops from the start
    vanishing: Path  # tests take it away and bring it back
    late: Path  # missing at start
    blocked: Path  # its output_dir lies under a regular file, so the folder cannot be made, even by root

    @property
    def log(self) -> Path:
        return self.state_dir / "svdaemon.log"

    @property
    def staging(self) -> Path:
        return self.base / "staging"

    @property
    def blocked_output_dir(self) -> Path:
        return self.base / BLOCKED_OUTPUT_DIR


def start_scene(base: Path, model_dir: Path, speech: np.ndarray) -> Scene:
    folders = {name: base / name for name in ("inbox", "looped", "vanishing", "late", "blocked")}
    for name, folder in folders.items():
        if name != "late":
            folder.mkdir()
    state_dir = base / "state"
    state_dir.mkdir()
    (base / "staging").mkdir()
    (state_dir / "jobs.sqlite3").write_bytes(b"this is not an SQLite database\n" * 64)
    (base / BLOCKED_OUTPUT_DIR.parent).write_text(
        "a regular file where the output folder's parent should be\n"
    )
    (folders["looped"] / "to-itself").symlink_to(folders["looped"])
    (folders["looped"] / "sub").mkdir()
    (folders["looped"] / "sub" / "back-up").symlink_to(folders["looped"])
    old = write_audio(folders["inbox"] / "old.wav", speech, 16000)
    write_by_hand_sidecars_newer_than(old)
    write_audio(folders["inbox"] / "pending.wav", speech, 16000)
    config = base / "config.yaml"
    config.write_text(
        f"model: {model_dir}\ndevice: cpu\nstate_dir: {state_dir}\nsettle_s: {SETTLE_S}\n"
        f"rescan_interval_s: 5\nformats: [{', '.join(FORMATS)}]\nwatch:\n"
        + "".join(f"  - path: {folder}\n" for name, folder in folders.items() if name != "blocked")
        + f"  - path: {folders['blocked']}\n    output_dir: {base / BLOCKED_OUTPUT_DIR}\n"
    )
    with (base / "daemon.out").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "svdaemon.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Scene(process, base, state_dir, **folders)


def write_by_hand_sidecars_newer_than(source: Path) -> None:
    """Sidecars a user made (not svdaemon), dated after the recording: `skip_existing` must leave them."""
    later = source.stat().st_mtime + 10
    for fmt in FORMATS:
        sidecar = source.with_suffix(f".{fmt}")
        sidecar.write_text("by hand\n")
        os.utime(sidecar, (later, later))


@pytest.fixture(scope="module")
def scene(
    tiny_model_dir: Path, speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    started = start_scene(tmp_path_factory.mktemp("faults"), tiny_model_dir, speech)
    try:
        assert wait_for(
            lambda: getattr(status(started), "state", None) is DaemonState.IDLE, START_TIMEOUT_S
        ), daemon_output(started)
        yield started
    finally:
        if started.process.poll() is None:
            started.process.send_signal(signal.SIGTERM)
        try:
            started.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.process.wait()


def status(scene: Scene) -> StatusSnapshot | None:
    """The daemon's answer to `status`, or None while nothing answers."""
    try:
        return request(scene.state_dir, Command("status")).snapshot
    except (DaemonNotRunning, ControlError):
        return None


def daemon_output(scene: Scene) -> str:
    return (scene.base / "daemon.out").read_text(errors="replace")[-4000:]


def assert_still_serving(scene: Scene) -> None:
    assert scene.process.poll() is None, daemon_output(scene)
    assert status(scene) is not None, "the daemon stopped answering status"


def log_lines(scene: Scene, *fragments: str) -> list[str]:
    """Lines of the daemon's log file holding every fragment."""
    text = scene.log.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if all(fragment in line for fragment in fragments)]


def job_of(scene: Scene, path: Path) -> Job | None:
    with JobQueue.open(scene.state_dir) as queue:
        return queue.get(path)


def drop(scene: Scene, folder: Path, name: str, samples: np.ndarray) -> Path:
    """Make a recording outside the watched folders and move it into `folder` at once, as a finished
    download arrives."""
    staged = write_audio(scene.staging / "staged.wav", samples, 16000)
    target = folder / name
    os.replace(staged, target)
    return target


def sidecars_of(source: Path) -> list[Path]:
    return [source.with_suffix(f".{fmt}") for fmt in FORMATS]


def has_sidecars(source: Path) -> bool:
    return all(path.exists() for path in sidecars_of(source))


def transcribed(scene: Scene, *sources: Path) -> bool:
    """Sidecars written and the job recorded done (the row is updated just after the files)."""
    return all(has_sidecars(s) and getattr(job_of(scene, s), "state", None) is JobState.DONE for s in sources)


def test_a_corrupt_state_db_is_set_aside_and_the_queue_rebuilt_from_the_scan(scene):
    inbox = scene.inbox
    assert wait_for(lambda: transcribed(scene, inbox / "pending.wav"), WORK_TIMEOUT_S), daemon_output(scene)
    set_aside = list(scene.state_dir.glob("jobs.sqlite3.corrupt-*"))
    assert set_aside and set_aside[0].read_bytes().startswith(b"this is not an SQLite database")
    assert log_lines(scene, "jobs.sqlite3 is corrupt", "moved it to", set_aside[0].name)
    assert wait_for(lambda: getattr(job_of(scene, inbox / "old.wav"), "state", None) is JobState.SKIPPED)
    assert all(path.read_text() == "by hand\n" for path in sidecars_of(inbox / "old.wav"))
    assert_still_serving(scene)


def test_a_file_deleted_while_queued_is_forgotten_and_the_others_done(scene, speech):
    assert request(scene.state_dir, Command("pause")).ok
    try:
        dropped = [drop(scene, scene.inbox, f"paused-{n}.wav", speech) for n in range(3)]
        states = lambda: {getattr(job_of(scene, path), "state", None) for path in dropped}  # noqa: E731
        assert wait_for(lambda: states() == {JobState.QUEUED}, WORK_TIMEOUT_S), "not queued while paused"
        deleted, *kept = dropped
        deleted.unlink()
    finally:
        assert request(scene.state_dir, Command("resume")).ok
    assert wait_for(lambda: transcribed(scene, *kept), WORK_TIMEOUT_S), daemon_output(scene)
    assert wait_for(lambda: job_of(scene, deleted) is None)
    assert not any(path.exists() for path in sidecars_of(deleted))
    assert log_lines(scene, str(deleted), "gone before it was transcribed")
    assert_still_serving(scene)


def test_a_name_that_is_not_utf8_gets_sidecars_named_with_the_same_bytes(scene, speech):
    source = drop(scene, scene.inbox, NOT_UTF8_NAME, speech)
    assert wait_for(lambda: transcribed(scene, source), WORK_TIMEOUT_S), daemon_output(scene)
    names = os.listdir(os.fsencode(scene.inbox))
    assert {b"caf\xe9.txt", b"caf\xe9.srt", b"caf\xe9.json"} <= set(names)
    document = json.loads(source.with_suffix(".json").read_bytes())
    assert document["file"] == str(scene.inbox / "caf\ufffd.wav")  # JSON text is UTF-8: the byte is replaced
    assert_still_serving(scene)


def test_the_log_names_a_file_whose_name_is_not_utf8(scene, speech):
    source = drop(scene, scene.inbox, os.fsdecode(b"r\xe9union.wav"), speech)
    assert wait_for(lambda: transcribed(scene, source), WORK_TIMEOUT_S), daemon_output(scene)
    assert log_lines(scene, "union.wav", "wrote")


def test_symlink_loops_in_a_root_change_nothing(scene, speech):
    looped = scene.looped
    first = drop(scene, looped / "sub", "first.wav", speech)
    assert wait_for(lambda: transcribed(scene, first), WORK_TIMEOUT_S), daemon_output(scene)
    (looped / "sub" / "again").symlink_to(looped / "sub")  # a new loop while it runs
    second = drop(scene, looped, "second.wav", speech)
    assert wait_for(lambda: transcribed(scene, second), WORK_TIMEOUT_S), daemon_output(scene)
    with JobQueue.open(scene.state_dir) as queue:
        under_looped = sorted(job.path for job in queue.jobs() if job.path.is_relative_to(looped))
    assert under_looped == sorted([first, second]), "a file was queued again under a looping path"
    assert_still_serving(scene)


def rename_away_and_back(root: Path) -> Callable[[], None]:
    away = root.with_name(root.name + "-away")
    os.rename(root, away)
    return lambda: os.rename(away, root)


def remove_and_recreate(root: Path) -> Callable[[], None]:
    shutil.rmtree(root)
    return root.mkdir


@pytest.mark.parametrize("vanish", [rename_away_and_back, remove_and_recreate])
def test_a_root_that_disappears_and_comes_back_is_watched_again(scene, speech, vanish):
    root = scene.vanishing
    seen_gone = len(log_lines(scene, str(root), "disappeared"))
    come_back = vanish(root)
    assert wait_for(lambda: len(log_lines(scene, str(root), "disappeared")) > seen_gone, 10)
    come_back()
    source = drop(scene, root, f"back-{vanish.__name__}.wav", speech)
    assert wait_for(lambda: transcribed(scene, source), WORK_TIMEOUT_S), daemon_output(scene)
    assert_still_serving(scene)


def test_a_root_missing_at_start_is_announced_and_watched_once_it_appears(scene, speech):
    assert wait_for(lambda: log_lines(scene, str(scene.late), "is missing; watching for it to appear"))
    scene.late.mkdir()
    source = drop(scene, scene.late, "first-of-late.wav", speech)
    assert wait_for(lambda: transcribed(scene, source), WORK_TIMEOUT_S), daemon_output(scene)
    assert_still_serving(scene)


def failed_try(scene: Scene, source: Path) -> Job | None:
    """The job once a try has failed and been recorded, else None."""
    job = job_of(scene, source)
    return job if job is not None and job.last_error else None


def test_an_unwritable_output_dir_fails_the_job_naming_the_folder_and_the_cause(scene, speech):
    source = drop(scene, scene.blocked, "memo.wav", speech)
    assert wait_for(lambda: failed_try(scene, source) is not None, WORK_TIMEOUT_S), daemon_output(scene)
    job = failed_try(scene, source)
    assert job.state is not JobState.DONE
    assert str(source) in job.last_error and str(scene.blocked_output_dir) in job.last_error
    assert "Not a directory" in job.last_error
    assert log_lines(scene, str(source), str(scene.blocked_output_dir), "Not a directory")
    assert not scene.blocked_output_dir.parent.is_dir()
    assert not any(path.exists() for path in sidecars_of(source))
    after = drop(scene, scene.inbox, "after-the-failure.wav", speech)
    assert wait_for(lambda: transcribed(scene, after), WORK_TIMEOUT_S), daemon_output(scene)
    assert_still_serving(scene)


# ---- WAV files written by hand: slowly, or with many channels -------------------------------------------

SLOW_CHANNELS, SLOW_RATE = 6, 48000  # 5.1 float32 at 48 kHz: 1.15 MB per second of audio
SLOW_SECONDS = 20
SLOW_CHUNK_S = 0.1


def wav_header(channels: int, rate: int, frames: int) -> bytes:
    """A float32 WAV header stating the final length (a recorder that knows it writes it first)."""
    data_bytes = frames * channels * 4
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", len(riff) + data_bytes) + riff


def record_in_real_time(path: Path, speech: np.ndarray, on_chunk: Callable[[], None]) -> None:
    """Write SLOW_SECONDS of audio at the pace it plays (about 1 MB/s), calling `on_chunk` after each write."""
    upsampled = np.repeat(speech, SLOW_RATE // 16000)
    signal_ = np.resize(upsampled, SLOW_SECONDS * SLOW_RATE).astype(np.float32)
    frames_per_chunk = round(SLOW_CHUNK_S * SLOW_RATE)
    with path.open("wb") as file:
        file.write(wav_header(SLOW_CHANNELS, SLOW_RATE, len(signal_)))
        for start in range(0, len(signal_), frames_per_chunk):
            chunk = signal_[start : start + frames_per_chunk]
            file.write(np.repeat(chunk[:, np.newaxis], SLOW_CHANNELS, axis=1).tobytes())
            file.flush()
            on_chunk()
            time.sleep(SLOW_CHUNK_S)


def test_a_file_written_slowly_is_transcribed_once_after_the_writer_finishes(scene, speech):
    source = scene.inbox / "live-recording.wav"
    early: list[str] = []

    def nothing_written_yet() -> None:
        early.extend(str(path) for path in sidecars_of(source) if path.exists())

    record_in_real_time(source, speech, nothing_written_yet)
    assert not early, f"sidecars appeared while the file was being written: {early}"
    assert wait_for(lambda: transcribed(scene, source), WORK_TIMEOUT_S), daemon_output(scene)
    document = json.loads(source.with_suffix(".json").read_text())
    assert document["duration_s"] == SLOW_SECONDS
    assert len(log_lines(scene, str(source), ": wrote ")) == 1
    assert job_of(scene, source).attempts == 0
    assert_still_serving(scene)


def test_an_eight_channel_recording_is_transcribed(scene, speech):
    source = scene.inbox / "surround-7.1.wav"
    staged = scene.staging / "eight-channels.wav"
    staged.write_bytes(
        wav_header(8, 16000, len(speech)) + np.repeat(speech[:, np.newaxis], 8, axis=1).tobytes()
    )
    os.replace(staged, source)
    ended = lambda: transcribed(scene, source) or failed_try(scene, source) is not None  # noqa: E731
    assert wait_for(ended, WORK_TIMEOUT_S), daemon_output(scene)
    assert_still_serving(scene)
    assert transcribed(scene, source), failed_try(scene, source).last_error


# ---- the real worker, caught at one exact point ---------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(make_tiny_pipeline) -> Pipeline:
    return make_tiny_pipeline(formats=list(FORMATS), settle_s=SETTLE_S, skip_existing=False)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    with JobQueue.open(tmp_path / "queue") as opened:
        yield opened


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    folder = tmp_path / "recordings"
    folder.mkdir()
    return folder


def enqueue(queue: JobQueue, path: Path) -> None:
    queue.enqueue(path, Fingerprint.of(path), root=path.parent)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """The workers a test makes; each is stopped after it, so its prefetch thread is joined."""
    made: list[Worker] = []
    yield made
    for worker in made:
        worker.stop()


def leftovers(source: Path) -> list[str]:
    """Anything beside the source: sidecars, or temp files a failed write left."""
    return sorted(name for name in os.listdir(source.parent) if name != source.name)


class ReplacesTheFileAtFirstProgress(Worker):
    """The real worker; when the first batch of a file is done, the file is replaced by `new_samples`,
    as an editor saving over a recording that is being transcribed."""

    def __init__(self, *args: object, new_samples: np.ndarray, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.new_samples = new_samples
        self.replaced: list[Path] = []

    def _progress(self, lead, first):
        report = super()._progress(lead, first)
        job = lead.job

        def replace_then_report(fraction: float) -> None:
            if job.path not in self.replaced:
                staged = write_audio(job.path.parent.parent / "replacement.wav", self.new_samples, 16000)
                os.replace(staged, job.path)
                self.replaced.append(job.path)
            report(fraction)

        return replace_then_report


def test_a_file_replaced_while_transcribed_gets_sidecars_only_of_its_new_content(
    pipeline, queue, speech, recordings, workers
):
    source = write_audio(recordings / "draft.wav", speech, 16000)
    longer = np.concatenate([speech, speech])
    enqueue(queue, source)
    worker = ReplacesTheFileAtFirstProgress(
        queue, pipeline, pipeline.config, current_owner(), idle_wait_s=0.05, new_samples=longer
    )
    workers.append(worker)
    assert worker.run_once() and worker.replaced == [source]
    job = queue.get(source)
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.fingerprint == Fingerprint.of(source)
    assert leftovers(source) == [], "sidecars of the replaced content were written"
    assert wait_for(worker.run_once), "the new content was not taken once it had settled"
    assert queue.get(source).state is JobState.DONE
    document = json.loads(source.with_suffix(".json").read_text())
    assert document["duration_s"] == round(len(longer) / 16000, 3)


def fsync_on_a_full_disk(real_fsync: Callable[[int], None]) -> Callable[[int], None]:
    """os.fsync as a full disk answers it for svdaemon's temp files (delayed allocation reports ENOSPC when
    data is flushed); every other fsync goes through. A disk cannot really be filled here: simulated."""

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".svdaemon-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    return fsync


@dataclass(frozen=True)
class FullDiskTry:
    source: Path
    worker: Worker
    job: Job


def try_on_a_full_disk(
    pipeline: Pipeline, queue: JobQueue, source: Path, monkeypatch: pytest.MonkeyPatch, workers: list[Worker]
) -> FullDiskTry:
    """Run the job of `source` once while the disk is (simulated) full; the disk stays full afterwards."""
    enqueue(queue, source)
    config: Config = dataclasses.replace(pipeline.config, max_attempts=1)
    worker = Worker(queue, pipeline, config, current_owner(), idle_wait_s=0.05)
    workers.append(worker)
    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk(os.fsync))
    assert worker.run_once()
    return FullDiskTry(source, worker, queue.get(source))


def test_a_full_disk_keeps_the_job_queued_with_back_off_and_no_attempt_counted(
    pipeline, queue, speech, recordings, monkeypatch, workers
):
    tried = try_on_a_full_disk(
        pipeline, queue, write_audio(recordings / "standup.wav", speech, 16000), monkeypatch, workers
    )
    job = tried.job
    assert job.state is JobState.QUEUED and job.error_kind is ErrorKind.ENVIRONMENT
    assert job.attempts == 0 and job.environment_faults == 1  # even with max_attempts 1
    assert job.not_before_s == pytest.approx(job.updated_at_s + backoff_s(1))
    assert str(recordings / "standup.") in job.last_error and "No space left" in job.last_error
    assert tried.worker.last_error == job.last_error
    assert leftovers(tried.source) == [], "a partial sidecar or a temp file was left"
    assert not tried.worker.run_once(), "retried before its back-off"


def test_the_error_for_a_full_disk_names_the_recording(
    pipeline, queue, speech, recordings, monkeypatch, workers
):
    tried = try_on_a_full_disk(
        pipeline, queue, write_audio(recordings / "retro.wav", speech, 16000), monkeypatch, workers
    )
    assert str(tried.source) in tried.job.last_error
