"""Decoding and VAD of the next files, run ahead of the engine on background threads, in bounded memory.

While the engine works on one pool of speech, the next files are already being decoded and segmented,
so the GPU does not wait for PyAV and silero between files. One core decodes MP3 at only a few hundred
times realtime, so several files are prepared at once, as many as there are decoders (each a process of
its own), and a long file alone uses the free decoders for pieces of itself (`decoder_pool`).
What is prepared is held to `max_speech_s` of speech (a file's chunk is about `pipeline.FLUSH_SPEECH_S`);
past that the threads wait for the engine.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from svdaemon.decoder import Decoder
from svdaemon.decoder_pool import DecoderPool, PooledDecoder
from svdaemon.errors import DecodeError, SvdaemonError
from svdaemon.jobs import Job
from svdaemon.pipeline import SpeechChunk

log = logging.getLogger(__name__)

# (path, checkpoint, decoder) → the file's chunks; `pipeline.Pipeline.speech_chunks`
ChunkSource = Callable[[Path, Callable[[float], None], Decoder], Iterator[SpeechChunk]]


@dataclass(frozen=True)
class Ready:
    """A job's next speech chunk, or the error that ended its preparation (then `chunk` is None)."""

    job: Job
    chunk: SpeechChunk | None
    error: SvdaemonError | None = None


class _Cancelled(Exception):
    """Raised at a checkpoint to abandon the file being prepared."""


class Prefetcher:
    """Prepares submitted jobs in submission order, as many at once as there are decoders; `get` hands
    chunks on as they are ready. A job's own chunks always come in order; with several decoders, jobs
    interleave."""

    def __init__(self, chunks: ChunkSource, decoders: list[Decoder], max_speech_s: float = 1200.0) -> None:
        self._chunks = chunks
        self._pool = DecoderPool(decoders)
        self._max_speech_s = max_speech_s
        self._condition = threading.Condition()
        self._todo: deque[Job] = deque()
        self._ready: deque[Ready] = deque()
        self._held_s = 0.0
        self._generation = 0  # bumped by `cancel`: work of an older generation is dropped
        self._closing = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name=f"svdaemon-prefetch-{n}", daemon=True)
            for n in range(self._pool.size)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        with self._condition:
            self._closing = True
            self._generation += 1
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    @property
    def waiting(self) -> int:
        """Jobs submitted whose preparation has not started."""
        with self._condition:
            return len(self._todo)

    @property
    def held_s(self) -> float:
        """Seconds of prepared speech waiting for the engine."""
        with self._condition:
            return self._held_s

    def submit(self, job: Job) -> None:
        with self._condition:
            self._todo.append(job)
            self._condition.notify_all()

    def get(self, timeout_s: float | None = None) -> Ready | None:
        """The next ready chunk or error; None when none came within `timeout_s` (0: do not wait)."""
        with self._condition:
            if not self._ready and timeout_s != 0:
                self._condition.wait_for(lambda: bool(self._ready), timeout_s)
            if not self._ready:
                return None
            ready = self._ready.popleft()
            if ready.chunk is not None:
                self._held_s -= ready.chunk.speech_s
            self._condition.notify_all()
            return ready

    def cancel(self) -> None:
        """Drop everything submitted and prepared, and abandon the file being prepared (at its next block)."""
        with self._condition:
            self._generation += 1
            self._todo.clear()
            self._ready.clear()
            self._held_s = 0.0
            self._condition.notify_all()

    # ---- the thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._closing or bool(self._todo))
                if self._closing:
                    return
                job, generation = self._todo.popleft(), self._generation
            self._prepare(job, generation, PooledDecoder(self._pool))

    def _prepare(self, job: Job, generation: int, decoder: Decoder) -> None:
        def checkpoint(_searched_s: float) -> None:
            if self._generation != generation:
                raise _Cancelled

        try:
            for chunk in self._chunks(job.path, checkpoint, decoder):
                if not self._hand_on(Ready(job, chunk), generation):
                    return
        except _Cancelled:
            log.debug("%s: preparation abandoned", job.path)
        except SvdaemonError as error:
            self._hand_on(Ready(job, None, error), generation)
        except Exception as error:  # a bug must cost this file, not leave the worker waiting forever
            log.exception("%s: preparation failed", job.path)
            self._hand_on(
                Ready(job, None, DecodeError(f"{job.path}: preparation failed ({error})")), generation
            )

    def _hand_on(self, ready: Ready, generation: int) -> bool:
        """Queue `ready` once there is room (a chunk always goes when nothing is held); False if cancelled."""
        size = ready.chunk.speech_s if ready.chunk is not None else 0.0
        with self._condition:
            self._condition.wait_for(
                lambda: (
                    self._generation != generation
                    or not self._ready
                    or self._held_s + size <= self._max_speech_s
                )
            )
            if self._generation != generation:
                return False
            self._ready.append(ready)
            self._held_s += size
            self._condition.notify_all()
            return True
