"""The worker against the real queue (SQLite), real files and the real pipeline with the tiny model."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest

from svdaemon.config import Config, WatchRoot, load_config
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import JobQueue, JobState
from svdaemon.owner import current_owner
from svdaemon.pipeline import Pipeline
from svdaemon.synthetic_speech import build_track
from svdaemon.worker import Worker

from doubles import wait_for
from media import write_audio, write_random_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    config = load_config(
        None,
        {
            "model": str(tiny_model_dir),
            "device": "cpu",
            "state_dir": str(tmp_path_factory.mktemp("state")),
            "watch": [],
            "max_attempts": 2,
            "settle_s": 0.5,
        },
    )
    return Pipeline.load(config, threads=1)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return build_track([0.3, "Our neighbour plays the violin every Monday evening", 0.5]).samples


@pytest.fixture
def queue(tmp_path: Path):
    with JobQueue.open(tmp_path / "queue") as opened:
        yield opened


def worker_for(queue: JobQueue, pipeline: Pipeline, **changes: object) -> Worker:
    config: Config = dataclasses.replace(pipeline.config, **changes)
    return Worker(queue, pipeline, config, current_owner(), idle_wait_s=0.05)


def enqueue(queue: JobQueue, path: Path) -> None:
    queue.enqueue(path, Fingerprint.of(path), root=path.parent)


def test_jobs_end_done_or_failed_with_the_cause(queue, pipeline, speech, tmp_path):
    good = write_audio(tmp_path / "good.wav", speech, 16000)
    bad = write_random_bytes(tmp_path / "bad.mp3")
    for path in (good, bad):
        enqueue(queue, path)
    worker = worker_for(queue, pipeline, skip_existing=False)
    assert worker.run_once() and worker.run_once()
    assert queue.get(good).state is JobState.DONE
    assert (tmp_path / "good.srt").exists() and (tmp_path / "good.txt").exists()
    first = queue.get(bad)
    assert first.state is JobState.QUEUED and first.attempts == 1
    assert "bad.mp3" in first.last_error and "bad.mp3" in worker.last_error
    assert not worker.run_once()  # the bad file waits out its back-off


def test_a_file_deleted_while_queued_is_forgotten(queue, pipeline, speech, tmp_path):
    path = write_audio(tmp_path / "gone.wav", speech, 16000)
    enqueue(queue, path)
    path.unlink()
    assert worker_for(queue, pipeline).run_once()
    assert queue.get(path) is None


def test_a_file_changed_after_queueing_is_requeued_not_transcribed(queue, pipeline, speech, tmp_path):
    path = write_audio(tmp_path / "moving.wav", speech, 16000)
    enqueue(queue, path)
    write_audio(path, np.concatenate([speech, speech]), 16000)
    assert worker_for(queue, pipeline).run_once()
    job = queue.get(path)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert job.fingerprint == Fingerprint.of(path)
    assert not (tmp_path / "moving.srt").exists()


def test_existing_newer_sidecars_are_skipped(queue, pipeline, speech, tmp_path):
    path = write_audio(tmp_path / "old.wav", speech, 16000)
    for ext in (".txt", ".srt"):
        (tmp_path / f"old{ext}").write_text("by hand\n")
    later = path.stat().st_mtime + 10
    for ext in (".txt", ".srt"):
        os.utime(tmp_path / f"old{ext}", (later, later))
    enqueue(queue, path)
    assert worker_for(queue, pipeline, skip_existing=True).run_once()
    assert queue.get(path).state is JobState.SKIPPED
    assert (tmp_path / "old.srt").read_text() == "by hand\n"


class PausedAtFirstBatch(Worker):
    """The real worker, told to pause when its first batch is done, so the test holds it there."""

    def _progress(self, job):
        report = super()._progress(job)

        def pause_then_report(done_s: float) -> None:
            self.pause()
            report(done_s)

        return pause_then_report


def test_pause_holds_and_stop_requeues_without_an_attempt(queue, pipeline, speech, tmp_path, monkeypatch):
    monkeypatch.setattr("svdaemon.pipeline.FLUSH_SPEECH_S", 2.0)
    monkeypatch.setattr("svdaemon.pipeline.BLOCK_S", 2.0)
    monkeypatch.setattr("svdaemon.vad.MAX_ROWS", 2)
    long_file = write_audio(tmp_path / "long.wav", np.tile(speech, 6), 16000)
    enqueue(queue, long_file)
    config = dataclasses.replace(pipeline.config, skip_existing=False)
    worker = PausedAtFirstBatch(queue, pipeline, config, current_owner(), idle_wait_s=0.05)
    worker.pause()
    worker.start()
    time.sleep(0.3)
    assert queue.get(long_file).state is JobState.QUEUED  # paused before claiming: nothing taken
    worker.resume()
    assert wait_for(lambda: worker.current is not None and worker.paused, 60)
    held_at = worker.current
    time.sleep(0.3)
    assert worker.current == held_at and queue.get(long_file).state is JobState.RUNNING
    assert worker.stop(timeout_s=10)
    job = queue.get(long_file)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert not (tmp_path / "long.srt").exists()


def test_the_thread_drains_the_queue_and_stops(queue, pipeline, speech, tmp_path):
    paths = [write_audio(tmp_path / f"n{i}.wav", speech, 16000) for i in range(3)]
    worker = worker_for(queue, pipeline, skip_existing=False)
    worker.start()
    for path in paths:
        enqueue(queue, path)
        worker.wake()
    assert wait_for(lambda: all(queue.get(p).state is JobState.DONE for p in paths), 60)
    assert worker.stop()


def test_a_file_that_fails_for_good_gets_an_error_sidecar_when_asked(queue, pipeline, tmp_path):
    bad = write_random_bytes(tmp_path / "noise.wav")
    enqueue(queue, bad)
    worker = worker_for(queue, pipeline, error_sidecar=True, max_attempts=1)
    assert worker.run_once()
    assert queue.get(bad).state is JobState.FAILED
    text = (tmp_path / "noise.error.txt").read_text()
    assert "noise.wav" in text and text.endswith("\n")


def test_a_watch_root_s_own_formats_and_output_dir_apply(queue, pipeline, speech, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = write_audio(inbox / "memo.wav", speech, 16000)
    enqueue(queue, path)
    root = WatchRoot(path=inbox, formats=("json",), output_dir=tmp_path / "out", language="en")
    worker = worker_for(queue, pipeline, skip_existing=False, watch=(root,))
    assert worker.run_once()
    assert queue.get(path).state is JobState.DONE
    assert (tmp_path / "out" / "memo.json").exists()
    assert not (inbox / "memo.srt").exists() and not (tmp_path / "out" / "memo.srt").exists()
