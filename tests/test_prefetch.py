"""Decode and VAD ahead of the engine: real files, the real pipeline's chunks, a real background thread."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from svdaemon.errors import DecodeError
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import JobQueue
from svdaemon.owner import current_owner
from svdaemon.pipeline import InProcessDecoder, Pipeline
from svdaemon.prefetch import Prefetcher
from svdaemon.synthetic_speech import build_track

from doubles import wait_for
from media import write_audio, write_random_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(make_tiny_pipeline) -> Pipeline:
    return make_tiny_pipeline()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return build_track([0.3, "Bright kites drift over the dunes", 0.6]).samples


def claimed(tmp_path: Path, paths: list[Path]):
    with JobQueue.open(tmp_path / "queue") as queue:
        for path in paths:
            queue.enqueue(path, Fingerprint.of(path), root=path.parent)
        return [queue.claim(current_owner()) for _ in paths]


def test_chunks_come_in_submission_order_and_errors_in_their_place(pipeline, speech, tmp_path):
    paths = [
        write_audio(tmp_path / "a.wav", speech, 16000),
        write_random_bytes(tmp_path / "broken.mp3"),
        write_audio(tmp_path / "c.flac", np.tile(speech, 2), 16000),
    ]
    prefetcher = Prefetcher(pipeline.speech_chunks, [pipeline.decoder])
    prefetcher.start()
    try:
        for job in claimed(tmp_path, paths):
            prefetcher.submit(job)
        got = [prefetcher.get(30) for _ in paths]
    finally:
        prefetcher.close()
    assert [ready.job.path for ready in got] == paths
    assert got[0].chunk.last and got[0].chunk.pieces and got[0].error is None
    assert (
        got[1].chunk is None and isinstance(got[1].error, DecodeError) and "broken.mp3" in str(got[1].error)
    )
    assert got[2].chunk.to_s == pytest.approx(2 * len(speech) / 16000, abs=0.01)


def test_prepared_speech_is_bounded_and_the_thread_waits_for_the_engine(
    pipeline, speech, tmp_path, monkeypatch
):
    monkeypatch.setattr("svdaemon.pipeline.FLUSH_SPEECH_S", 1.0)
    monkeypatch.setattr("svdaemon.pipeline.BLOCK_S", 1.0)
    monkeypatch.setattr("svdaemon.vad.MAX_ROWS", 2)  # VAD closes spans as the blocks come, not at the end
    pauses = np.tile(np.concatenate([speech, np.zeros(24000, dtype=np.float32)]), 3)  # 3 spans per file
    paths = [write_audio(tmp_path / f"f{i}.wav", pauses, 16000) for i in range(4)]
    prefetcher = Prefetcher(pipeline.speech_chunks, [pipeline.decoder], max_speech_s=2.0)
    prefetcher.start()
    try:
        for job in claimed(tmp_path, paths):
            prefetcher.submit(job)
        assert wait_for(lambda: prefetcher.held_s > 0, 30)
        time.sleep(1.0)  # time enough to prepare everything, were it not bounded
        assert prefetcher.held_s <= 3.0  # the bound, or one ~2.5 s chunk when nothing else is held
        assert prefetcher.waiting > 0
        drained = []
        while len({ready.job.path for ready in drained if ready.chunk.last}) < len(paths):
            drained.append(prefetcher.get(30))
    finally:
        prefetcher.close()
    assert [r.job.path for r in drained if r.chunk.last] == paths


def test_cancel_abandons_the_file_in_preparation_and_drops_the_rest(pipeline, speech, tmp_path, monkeypatch):
    monkeypatch.setattr("svdaemon.pipeline.BLOCK_S", 0.5)
    long_path = write_audio(tmp_path / "long.wav", np.tile(speech, 40), 16000)
    short_path = write_audio(tmp_path / "short.wav", speech, 16000)
    prefetcher = Prefetcher(pipeline.speech_chunks, [pipeline.decoder])
    prefetcher.start()
    try:
        for job in claimed(tmp_path, [long_path, short_path]):
            prefetcher.submit(job)
        prefetcher.cancel()
        assert prefetcher.get(1.0) is None and prefetcher.waiting == 0 and prefetcher.held_s == 0
        (job,) = claimed(tmp_path / "again", [short_path])
        prefetcher.submit(job)
        assert prefetcher.get(30).job.path == short_path  # still serving after a cancel
    finally:
        prefetcher.close()


def test_with_several_decoders_files_are_prepared_at_once_each_in_its_own_order(
    pipeline, speech, tmp_path, monkeypatch
):
    monkeypatch.setattr("svdaemon.pipeline.FLUSH_SPEECH_S", 1.0)
    monkeypatch.setattr("svdaemon.vad.MAX_ROWS", 2)
    pauses = np.tile(np.concatenate([speech, np.zeros(24000, dtype=np.float32)]), 4)
    paths = [write_audio(tmp_path / f"m{i}.mp3", pauses, 16000) for i in range(4)]
    prefetcher = Prefetcher(pipeline.speech_chunks, [InProcessDecoder(), InProcessDecoder()])
    prefetcher.start()
    try:
        for job in claimed(tmp_path, paths):
            prefetcher.submit(job)
        got = []
        while sum(1 for ready in got if ready.chunk.last) < len(paths):
            got.append(prefetcher.get(30))
    finally:
        prefetcher.close()
    for path in paths:
        spans = [(r.chunk.from_s, r.chunk.to_s) for r in got if r.job.path == path]
        assert spans[0][0] == 0.0 and all(a[1] == b[0] for a, b in pairwise(spans))  # in order, no gap
    assert {r.job.path for r in got} == set(paths)
