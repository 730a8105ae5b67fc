"""The daemon's decode processes as one pool, and long compressed files decoded in parallel pieces.

One core decodes MP3 at only a few hundred times realtime: an hour of it takes ~9 s in one process while
the GPU finishes its speech in a few. So a long compressed file is cut into pieces of PIECE_S and the pieces
are decoded at once on every decoder that is free, each seeking to its own piece (`audio.SampleSpan`:
the pieces join to exactly the whole-file samples), while the caller consumes them in order. Each piece
holds its decoder only while it decodes, so a file that arrives meanwhile waits at most one piece for
one. Memory: at most one piece of samples per decoder is buffered (~19 MB each).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svdaemon import audio
from svdaemon.audio import SampleSpan
from svdaemon.decoder import Decoder

log = logging.getLogger(__name__)

PIECE_S = 300.0  # audio per piece: a multiple of the block length, so blocks come out as if decoded whole


class DecoderPool:
    """Decoders free for the taking; `lease` waits for one, `try_lease` does not."""

    def __init__(self, decoders: Sequence[Decoder]) -> None:
        if not decoders:
            raise ValueError("a decoder pool needs at least one decoder")
        self.size = len(decoders)
        self._free = deque(decoders)
        self._condition = threading.Condition()

    def lease(self) -> Decoder:
        with self._condition:
            self._condition.wait_for(lambda: bool(self._free))
            return self._free.popleft()

    def try_lease(self) -> Decoder | None:
        with self._condition:
            return self._free.popleft() if self._free else None

    def give_back(self, decoder: Decoder) -> None:
        with self._condition:
            self._free.append(decoder)
            self._condition.notify()

    @contextlib.contextmanager
    def leased(self) -> Iterator[Decoder]:
        decoder = self.lease()
        try:
            yield decoder
        finally:
            self.give_back(decoder)


def piece_spans(duration_s: float, piece_s: float = PIECE_S) -> list[SampleSpan]:
    """The file's pieces in order; the last is open-ended, so a header that understates the length loses
    nothing (and pieces past a real end that came early simply decode to nothing)."""
    count = max(1, int(np.ceil(duration_s / piece_s)))
    length = round(piece_s * audio.SAMPLE_RATE)
    return [SampleSpan(n * length, (n + 1) * length if n < count - 1 else None) for n in range(count)]


def worth_splitting(info: audio.AudioInfo, decoders: int, piece_s: float = PIECE_S) -> bool:
    """At least two pieces long, compressed (PCM decodes at thousands of times realtime), in a container
    whose timestamps let a piece seek to its own samples, and with decoders to share the work."""
    return (
        decoders > 1
        and info.duration_s >= 2 * piece_s
        and info.seeks_exactly
        and not info.codec.startswith("pcm_")
    )


class PooledDecoder:
    """A `Decoder` for one job that takes decoders from the pool as it needs them: one to probe, one for a
    file decoded whole, and as many as are free for a file decoded in pieces."""

    def __init__(self, pool: DecoderPool, piece_s: float = PIECE_S) -> None:
        self._pool = pool
        self._piece_s = piece_s
        self._probed: audio.AudioInfo | None = None

    def probe(self, path: Path, audio_language: str | None = None) -> audio.AudioInfo:
        with self._pool.leased() as decoder:
            self._probed = decoder.probe(path, audio_language)
        return self._probed

    def blocks(
        self,
        path: Path,
        audio_language: str | None = None,
        duration_s: float | None = None,
        span: SampleSpan | None = None,
    ) -> Iterator[np.ndarray]:
        """The file's blocks (or a span's, on one decoder), in pieces where that is worth it."""
        info = self._probed if self._probed is not None and self._probed.path == path else None
        info = info or self.probe(path, audio_language)
        if span is None and worth_splitting(info, self._pool.size, self._piece_s):
            log.debug("%s: decoding %.0f s of %s in pieces", path, info.duration_s, info.codec)
            spans = piece_spans(info.duration_s, self._piece_s)
            return _PiecesInOrder(self._pool, path, audio_language, info.duration_s, spans).blocks()
        return self._on_one(path, audio_language, duration_s or info.duration_s, span)

    def _on_one(
        self, path: Path, audio_language: str | None, duration_s: float, span: SampleSpan | None
    ) -> Iterator[np.ndarray]:
        with self._pool.leased() as decoder:
            yield from decoder.blocks(path, audio_language, duration_s, span)


_END = object()  # a piece's last item after its blocks


@dataclass
class _Piece:
    span: SampleSpan
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # blocks, then _END or an exception


class _PiecesInOrder:
    """Starts pieces on free decoders, at most one per decoder ahead of the caller, and yields them in order."""

    def __init__(
        self,
        pool: DecoderPool,
        path: Path,
        audio_language: str | None,
        duration_s: float,
        spans: list[SampleSpan],
    ) -> None:
        self._pool = pool
        self._path = path
        self._language = audio_language
        self._duration_s = duration_s
        self._todo = deque(_Piece(span) for span in spans)
        self._started: deque[_Piece] = deque()  # started and not yet consumed, in order
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def blocks(self) -> Iterator[np.ndarray]:
        try:
            while self._todo or self._started:
                self._start_free()
                if not self._started:  # every decoder is busy elsewhere: wait for one
                    self._start(self._todo.popleft(), self._pool.lease())
                yield from self._consume(self._started.popleft())
        finally:
            self._stop.set()  # abandoned (or done): pieces still running stop at their next block
            for thread in self._threads:
                thread.join()

    def _start_free(self) -> None:
        while self._todo and len(self._started) < self._pool.size:
            decoder = self._pool.try_lease()
            if decoder is None:
                return
            self._start(self._todo.popleft(), decoder)

    def _start(self, piece: _Piece, decoder: Decoder) -> None:
        thread = threading.Thread(
            target=self._decode, args=(piece, decoder), name="svdaemon-decode-piece", daemon=True
        )
        self._started.append(piece)
        self._threads.append(thread)
        thread.start()

    def _decode(self, piece: _Piece, decoder: Decoder) -> None:
        try:  # the decoder takes the piece's share of the file's duration as its time limit
            blocks = decoder.blocks(self._path, self._language, self._duration_s, piece.span)
            with contextlib.closing(blocks):
                for block in blocks:
                    if self._stop.is_set():
                        return
                    piece.out.put(block)
            piece.out.put(_END)
        except Exception as error:  # the caller raises it in its thread, when this piece's turn comes
            piece.out.put(error)
        finally:
            self._pool.give_back(decoder)

    @staticmethod
    def _consume(piece: _Piece) -> Iterator[np.ndarray]:
        while (item := piece.out.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item
