"""The worker against the real queue (SQLite), real files and the real pipeline with the tiny model."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from svdaemon.config import Config, WatchRoot
from svdaemon.engine import VramReading
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import JobQueue, JobState
from svdaemon.owner import current_owner
from svdaemon.pipeline import Pipeline
from svdaemon.synthetic_speech import build_track
from svdaemon.worker import WorkClock, Worker

from doubles import wait_for
from media import write_audio, write_random_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(make_tiny_pipeline) -> Pipeline:
    return make_tiny_pipeline(max_attempts=2, settle_s=0.5)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return build_track([0.3, "Our neighbour plays the violin every Monday evening", 0.5]).samples


@pytest.fixture
def queue(tmp_path: Path):
    with JobQueue.open(tmp_path / "queue") as opened:
        yield opened


@pytest.fixture
def worker_for(queue: JobQueue, pipeline: Pipeline):
    """Makes workers over this test's queue with config changes; each is stopped (its threads joined) after."""
    made: list[Worker] = []

    def make(**changes: object) -> Worker:
        config: Config = dataclasses.replace(pipeline.config, **changes)
        made.append(Worker(queue, pipeline, config, current_owner(), idle_wait_s=0.05))
        return made[-1]

    yield make
    for worker in made:
        worker.stop()


def enqueue(queue: JobQueue, path: Path) -> None:
    queue.enqueue(path, Fingerprint.of(path), root=path.parent)


def test_jobs_end_done_or_failed_with_the_cause(queue, pipeline, speech, tmp_path, worker_for):
    good = write_audio(tmp_path / "good.wav", speech, 16000)
    bad = write_random_bytes(tmp_path / "bad.mp3")
    for path in (good, bad):
        enqueue(queue, path)
    worker = worker_for(skip_existing=False)
    assert worker.run_once() and worker.run_once()
    assert queue.get(good).state is JobState.DONE
    assert (tmp_path / "good.srt").exists() and (tmp_path / "good.txt").exists()
    first = queue.get(bad)
    assert first.state is JobState.QUEUED and first.attempts == 1
    assert "bad.mp3" in first.last_error and "bad.mp3" in worker.last_error
    assert not worker.run_once()  # the bad file waits out its back-off


def test_a_file_deleted_while_queued_is_forgotten(queue, pipeline, speech, tmp_path, worker_for):
    path = write_audio(tmp_path / "gone.wav", speech, 16000)
    enqueue(queue, path)
    path.unlink()
    assert worker_for().run_once()
    assert queue.get(path) is None


def test_a_file_changed_after_queueing_is_requeued_not_transcribed(
    queue, pipeline, speech, tmp_path, worker_for
):
    path = write_audio(tmp_path / "moving.wav", speech, 16000)
    enqueue(queue, path)
    write_audio(path, np.concatenate([speech, speech]), 16000)
    assert worker_for().run_once()
    job = queue.get(path)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert job.fingerprint == Fingerprint.of(path)
    assert not (tmp_path / "moving.srt").exists()


def test_existing_newer_sidecars_are_skipped(queue, pipeline, speech, tmp_path, worker_for):
    path = write_audio(tmp_path / "old.wav", speech, 16000)
    for ext in (".txt", ".srt"):
        (tmp_path / f"old{ext}").write_text("by hand\n")
    later = path.stat().st_mtime + 10
    for ext in (".txt", ".srt"):
        os.utime(tmp_path / f"old{ext}", (later, later))
    enqueue(queue, path)
    assert worker_for(skip_existing=True).run_once()
    assert queue.get(path).state is JobState.SKIPPED
    assert (tmp_path / "old.srt").read_text() == "by hand\n"


def test_a_sidecar_the_user_edited_is_kept_and_the_others_rewritten_without_a_fault(
    queue, pipeline, speech, tmp_path, worker_for, caplog
):
    path = write_audio(tmp_path / "x.wav", speech, 16000)
    enqueue(queue, path)
    worker = worker_for(error_sidecar=True, max_attempts=1)  # a fault would fail it for good at once
    assert worker.run_once()
    assert queue.get(path).state is JobState.DONE
    edited = b"1\n00:00:00,500 --> 00:00:02,000\nOur neighbour plays the violin.\n\n"
    (tmp_path / "x.srt").write_bytes(edited)
    txt_before = os.stat(tmp_path / "x.txt")

    write_audio(path, np.concatenate([speech, speech]), 16000)  # the recording changes: queued again
    enqueue(queue, path)
    with caplog.at_level("INFO", logger="svdaemon.worker"):
        assert worker.run_once()
    job = queue.get(path)
    assert job.state is JobState.DONE and job.attempts == 0 and job.error_kind is None
    assert (tmp_path / "x.srt").read_bytes() == edited
    txt_after = os.stat(tmp_path / "x.txt")
    assert (txt_after.st_ino, txt_after.st_mtime_ns) != (txt_before.st_ino, txt_before.st_mtime_ns)
    assert not (tmp_path / "x.error.txt").exists()
    assert worker.last_error is None
    (said,) = [message for message in caplog.messages if "kept" in message]  # said once
    assert said.startswith(f"{path} → x.txt ({2 * len(speech) / 16000:.1f} s audio, ")
    assert said.endswith("; kept x.srt (edited since svdaemon wrote it; overwrite: ours)")


def test_a_silent_file_is_done_and_its_log_line_says_no_speech_was_found(
    queue, pipeline, tmp_path, worker_for, caplog
):
    path = write_audio(tmp_path / "silence.wav", np.zeros(16000 * 2, np.float32), 16000)
    enqueue(queue, path)
    with caplog.at_level("INFO", logger="svdaemon.worker"):
        assert worker_for().run_once()
    assert queue.get(path).state is JobState.DONE
    assert f"{path}: no speech found (2.0 s audio; empty silence.txt, silence.srt written)" in caplog.messages
    assert (tmp_path / "silence.srt").read_bytes() == b"" == (tmp_path / "silence.txt").read_bytes()


class PausedAtFirstBatch(Worker):
    """The real worker, told to pause when its first batch is done, so the test holds it there."""

    def _progress(self, lead, first):
        report = super()._progress(lead, first)

        def pause_then_report(fraction: float) -> None:
            self.pause()
            report(fraction)

        return pause_then_report


def queue_a_file_of_many_batches(queue, pipeline, speech, tmp_path, monkeypatch) -> tuple[Path, Config]:
    """A file six sentences long, cut in 2 s blocks and chunks so that the engine runs several batches on it
    (a place to pause between them); and a config that transcribes it even when its sidecars exist."""
    monkeypatch.setattr("svdaemon.pipeline.FLUSH_SPEECH_S", 2.0)
    monkeypatch.setattr("svdaemon.pipeline.BLOCK_S", 2.0)
    monkeypatch.setattr("svdaemon.vad.MAX_ROWS", 2)
    long_file = write_audio(tmp_path / "long.wav", np.tile(speech, 6), 16000)
    enqueue(queue, long_file)
    return long_file, dataclasses.replace(pipeline.config, skip_existing=False)


def test_pause_holds_and_stop_requeues_without_an_attempt(queue, pipeline, speech, tmp_path, monkeypatch):
    long_file, config = queue_a_file_of_many_batches(queue, pipeline, speech, tmp_path, monkeypatch)
    worker = PausedAtFirstBatch(queue, pipeline, config, current_owner(), idle_wait_s=0.05)
    worker.pause()
    worker.start()
    time.sleep(0.3)
    assert queue.get(long_file).state is JobState.QUEUED  # paused before claiming: nothing taken
    worker.resume()
    assert wait_for(lambda: worker.current is not None and worker.paused, 60)
    held_at = worker.current
    assert held_at.duration_s == pytest.approx(6 * len(speech) / 16000, abs=0.01) and 0 < held_at.progress < 1
    time.sleep(0.3)
    assert worker.current == held_at and queue.get(long_file).state is JobState.RUNNING
    assert worker.stop(timeout_s=10)
    job = queue.get(long_file)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert not (tmp_path / "long.srt").exists()


def test_the_thread_drains_the_queue_and_stops(queue, pipeline, speech, tmp_path, worker_for):
    paths = [write_audio(tmp_path / f"n{i}.wav", speech, 16000) for i in range(3)]
    worker = worker_for(skip_existing=False)
    worker.start()
    for path in paths:
        enqueue(queue, path)
        worker.wake()
    assert wait_for(lambda: all(queue.get(p).state is JobState.DONE for p in paths), 60)
    assert worker.stop()


def test_a_file_that_fails_for_good_gets_an_error_sidecar_when_asked(queue, pipeline, tmp_path, worker_for):
    bad = write_random_bytes(tmp_path / "noise.wav")
    enqueue(queue, bad)
    worker = worker_for(error_sidecar=True, max_attempts=1)
    assert worker.run_once()
    assert queue.get(bad).state is JobState.FAILED
    text = (tmp_path / "noise.error.txt").read_text()
    assert "noise.wav" in text and text.endswith("\n")


def test_a_watch_root_s_own_formats_and_output_dir_apply(queue, pipeline, speech, tmp_path, worker_for):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = write_audio(inbox / "memo.wav", speech, 16000)
    enqueue(queue, path)
    root = WatchRoot(path=inbox, formats=("json",), output_dir=tmp_path / "out", language="en")
    worker = worker_for(skip_existing=False, watch=(root,))
    assert worker.run_once()
    assert queue.get(path).state is JobState.DONE
    assert (tmp_path / "out" / "memo.json").exists()
    assert not (inbox / "memo.srt").exists() and not (tmp_path / "out" / "memo.srt").exists()


def test_an_error_sidecar_goes_to_the_root_s_output_dir(queue, pipeline, tmp_path, worker_for):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bad = write_random_bytes(inbox / "noise.wav")
    enqueue(queue, bad)
    root = WatchRoot(path=inbox, output_dir=tmp_path / "out")
    worker = worker_for(error_sidecar=True, max_attempts=1, watch=(root,))
    assert worker.run_once()
    assert queue.get(bad).state is JobState.FAILED
    assert "noise.wav" in (tmp_path / "out" / "noise.error.txt").read_text()
    assert not (inbox / "noise.error.txt").exists()


# ---- the GPU's part, simulated: these readings and errors stand for a GPU that CI does not have ----------


class SimulatedCard:
    """Free-memory readings a GPU would give, in order (the last repeats), and what svdaemon did with it."""

    def __init__(self, free_mb: list[int]) -> None:
        self.free_mb = free_mb
        self.released = self.unloaded = 0

    def vram(self) -> VramReading:
        free = self.free_mb.pop(0) if len(self.free_mb) > 1 else self.free_mb[0]
        return VramReading(used_mb=900, free_mb=free, total_mb=24_000)

    def release_cache(self) -> None:
        self.released += 1

    def unload(self) -> None:
        self.unloaded += 1


@pytest.fixture
def card(pipeline, monkeypatch):
    def install(free_mb: list[int]) -> SimulatedCard:
        simulated = SimulatedCard(free_mb)
        for name in ("vram", "release_cache", "unload"):
            monkeypatch.setattr(pipeline.engine, name, getattr(simulated, name))
        monkeypatch.setattr("svdaemon.worker.YIELD_POLL_S", 0.05)
        return simulated

    return install


def test_the_worker_steps_aside_while_another_program_needs_the_memory(
    queue, pipeline, speech, tmp_path, card, worker_for
):
    simulated = card([300] * 20 + [1100] * 10 + [4000])  # a game starts, hovers at the floor, then quits
    path = write_audio(tmp_path / "during-a-game.wav", speech, 16000)
    enqueue(queue, path)
    worker = worker_for(skip_existing=False, vram_floor_mb=1024)
    worker.start()
    assert wait_for(lambda: worker.standing_aside is not None, 10)
    kind, why = worker.standing_aside
    assert kind == "vram" and "another program needs the GPU's memory (300 MB free" in why
    assert queue.get(path).state is JobState.QUEUED and simulated.released >= 1
    assert wait_for(lambda: queue.get(path).state is JobState.DONE, 60)
    assert worker.standing_aside is None
    assert simulated.free_mb == [4000]  # it waited past the readings just above the floor
    assert worker.stop()


def test_a_drained_queue_gives_the_cache_back_and_idling_unloads(queue, pipeline, speech, tmp_path, card):
    simulated = card([8000])
    now = [1000.0]
    worker = Worker(
        queue,
        pipeline,
        dataclasses.replace(pipeline.config, skip_existing=False, idle_unload_s=600),
        current_owner(),
        idle_wait_s=0.02,
        clock=lambda: now[0],
    )
    enqueue(queue, write_audio(tmp_path / "short.wav", speech, 16000))
    worker.start()
    assert wait_for(lambda: simulated.released >= 1, 30)
    assert simulated.unloaded == 0
    now[0] += 601
    assert wait_for(lambda: simulated.unloaded >= 1, 5)
    assert worker.stop()


def test_a_failed_gpu_requeues_the_file_and_waits_for_a_device(
    queue, pipeline, speech, tmp_path, monkeypatch, worker_for
):
    def gpu_fault(waves, language=None):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (simulated)")

    path = write_audio(tmp_path / "talk.wav", speech, 16000)
    enqueue(queue, path)
    monkeypatch.setattr(pipeline.engine, "recognize_raw", gpu_fault)
    monkeypatch.setattr("svdaemon.worker.gpu_free_memory", lambda: [])  # the only GPU is gone
    worker = worker_for(skip_existing=False, fallback_to_cpu=False)
    assert worker.run_once()
    job = queue.get(path)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert "illegal memory access" in worker.last_error and str(path) in worker.last_error
    kind, why = worker.standing_aside
    assert kind == "no_device" and "no other device" in why
    worker.start()
    time.sleep(0.3)
    assert queue.get(path).attempts == 0 and queue.get(path).state is JobState.QUEUED  # nothing claimed
    monkeypatch.undo()
    worker.request_device("cpu")  # what `svdaemon device cpu` sends
    assert wait_for(lambda: queue.get(path).state is JobState.DONE, 60)
    assert worker.standing_aside is None
    assert worker.stop()


def test_files_prepared_while_the_engine_works_share_its_next_call_and_get_the_same_sidecars(
    queue, pipeline, speech, tmp_path, worker_for, monkeypatch
):
    contents = [speech, speech[: len(speech) // 2], np.tile(speech, 2)]
    for folder in ("pooled", "alone"):
        (tmp_path / folder).mkdir()
    pooled = [write_audio(tmp_path / "pooled" / f"p{i}.wav", c, 16000) for i, c in enumerate(contents)]
    alone = [write_audio(tmp_path / "alone" / f"p{i}.wav", c, 16000) for i, c in enumerate(contents)]
    for path in alone:
        pipeline.process(path, root=path.parent)
    real_recognize = pipeline.engine.recognize
    calls: list[int] = []

    def busy_first_call(pieces, progress=None, language=None):
        """The real engine; its first call is held for a moment, as a long batch on a busy GPU would be."""
        calls.append(len(pieces))
        if len(calls) == 1:
            time.sleep(1.0)
        return real_recognize(pieces, progress, language)

    monkeypatch.setattr(pipeline.engine, "recognize", busy_first_call)
    for path in pooled:
        enqueue(queue, path)
    worker = worker_for(skip_existing=False)
    worker.start()
    assert wait_for(lambda: all(queue.get(p).state is JobState.DONE for p in pooled), 60)
    assert len(calls) == 2  # the first file alone, then the other two in one call
    assert 0 < worker.usage.engine_s <= worker.usage.working_s  # the GPU-idle measure: here, held 1 s
    for mine, reference in zip(pooled, alone, strict=True):
        for fmt in ("txt", "srt"):
            assert mine.with_suffix(f".{fmt}").read_text() == reference.with_suffix(f".{fmt}").read_text()


class PausedOnceAtFirstBatch(Worker):
    """The real worker, told to pause once, when its first batch is done."""

    held = False

    def _progress(self, lead, first):
        report = super()._progress(lead, first)

        def pause_once_then_report(fraction: float) -> None:
            if not self.held:
                self.held = True
                self.pause()
            report(fraction)

        return pause_once_then_report


def test_time_spent_paused_is_not_counted_in_a_file_s_speed(
    queue, pipeline, speech, tmp_path, monkeypatch, caplog
):
    """Paused at its first batch for PAUSE_S, a file still reports the speed it was transcribed at: the work
    time its × realtime stands for is far below the pause (the tiny model needs well under a second)."""
    pause_s = 3.0
    long_file, config = queue_a_file_of_many_batches(queue, pipeline, speech, tmp_path, monkeypatch)
    worker = PausedOnceAtFirstBatch(queue, pipeline, config, current_owner(), idle_wait_s=0.05)
    with caplog.at_level(logging.INFO, logger="svdaemon.worker"):
        worker.start()
        try:
            assert wait_for(lambda: worker.current is not None and worker.paused, 60)
            time.sleep(pause_s)
            worker.resume()
            assert wait_for(lambda: queue.get(long_file).state is JobState.DONE, 60)
        finally:
            worker.stop()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{long_file} →")]
    audio_s, speed = re.search(r"\(([0-9.]+) s audio, ([0-9.]+)× realtime\)", line).groups()
    assert float(audio_s) / float(speed) < pause_s, line


def test_the_work_clock_stands_still_while_the_worker_is_held():
    now = [0.0]
    clock = WorkClock(lambda: now[0])
    now[0] = 2.0
    clock.hold()
    now[0] = 7.0
    assert clock.read() == 2.0
    clock.hold()  # held already: the hold began at 2
    clock.go()
    now[0] = 8.0
    clock.go()  # going already
    assert clock.read() == 3.0
