"""Decode in a persistent child process, so a decoder that crashes or hangs costs one job, not the daemon.

FFmpeg is C: a damaged file can segfault it or send it into an endless loop, and in-process either one
would take the daemon, its loaded model and its queue with it. The child is a fresh interpreter that
imports only this module, `svdaemon.audio`, PyAV and numpy (never torch, never CUDA), started once and
reused for every file, and started again when it dies. The parent watches it: a child that dies mid-file
or sends nothing for too long raises DecodeError for that file, and the next file gets a fresh child.

Protocol over one duplex pipe, strictly request then reply, with log records interleaved anywhere:
``("probe", path, language)`` → ``("info", AudioInfo)``; ``("decode", path, language, block_s, span,
target)`` (span: an `audio.SampleSpan`, or None for the whole file) then ``"next"`` per block →
``("block", samples)`` + the raw float32 bytes, then ``("end",)``; any request
may be answered by ``("error", message)``. ``"stop"`` (abandon the current file, if any) → ``("stopped",)``,
so the parent can drain whatever was in flight before it starts another file. The parent asks for the
next block as soon as it receives one, so the child decodes ahead while the caller works, and at most two
blocks are ever in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Protocol

import numpy as np

from svdaemon import audio
from svdaemon.child import python_code_command
from svdaemon.errors import DecodeError, EnvironmentFault

logger = logging.getLogger(__name__)


class Decoder(Protocol):
    """Where audio comes from: in this process, or the daemon's persistent decode process."""

    def probe(self, path: Path, audio_language: str | None = None) -> audio.AudioInfo: ...

    def blocks(
        self,
        path: Path,
        audio_language: str | None = None,
        duration_s: float | None = None,
        span: audio.SampleSpan | None = None,
    ) -> Iterator[np.ndarray]: ...


DecodeTarget = Callable[[Path, float, "str | None", "audio.SampleSpan | None"], Iterator[np.ndarray]]

_START_TIMEOUT_S = 60.0  # a fresh interpreter importing PyAV and numpy, on a busy machine
_STOP_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_SPAWNER = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="svdaemon-decoder-spawn"
)  # see _die_with_parent


class DecoderProcess:
    """`audio.probe` and `audio.decode_blocks`, run in a child process that is started once and reused.

    Time limits count only the time spent waiting for the child: a block must arrive within
    `max(min_timeout_s, block_s * timeout_factor)`, and a whole file within
    `max(min_timeout_s, duration_s * timeout_factor)`. `decode_target` is the function the child runs in
    place of `audio.decode_blocks` (a module-level function, so it pickles): tests make it hang or crash.
    Not thread-safe: one caller (the worker) at a time.
    """

    def __init__(
        self,
        block_s: float = 30.0,
        timeout_factor: float = 1.0,
        min_timeout_s: float = 60.0,
        decode_target: DecodeTarget = audio.decode_blocks,
    ):
        if block_s <= 0:
            raise ValueError(f"block_s must be positive, got {block_s}")
        self.block_s = block_s
        self.timeout_factor = timeout_factor
        self.min_timeout_s = min_timeout_s
        self._decode_target = decode_target
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when none is running."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def probe(self, path: Path, audio_language: str | None = None) -> audio.AudioInfo:
        """`audio.probe`, run in the child."""
        conn = self._request(("probe", path, audio_language))
        return self._reply(conn, path, self.min_timeout_s, self.min_timeout_s)

    def blocks(
        self,
        path: Path,
        audio_language: str | None = None,
        duration_s: float | None = None,
        span: audio.SampleSpan | None = None,
    ) -> Iterator[np.ndarray]:
        """`audio.decode_blocks`, streamed from the child; probes first when `duration_s` is not given.

        With `span`, only that piece of the file, and the time limit is the piece's share of `duration_s`.
        Stopping early (closing the generator) leaves the child ready for the next file.
        """
        if duration_s is None:
            duration_s = self.probe(path, audio_language).duration_s
        block_limit_s = max(self.min_timeout_s, self.block_s * self.timeout_factor)
        budget_s = max(self.min_timeout_s, _decoded_s(duration_s, span) * self.timeout_factor)
        conn = self._request(("decode", path, audio_language, self.block_s, span, self._decode_target))
        finished = False
        try:
            while True:
                started = time.monotonic()
                block = self._reply(conn, path, block_limit_s, budget_s)
                budget_s -= time.monotonic() - started
                if block is None:
                    finished = True
                    return
                with contextlib.suppress(OSError):  # a child gone now is reported by the next _reply
                    conn.send("next")  # the child decodes ahead while the caller works on this block
                yield block
        except DecodeError:
            finished = True  # the child already answered, or was stopped
            raise
        finally:
            if not finished:
                self._abandon(path)

    def close(self) -> None:
        """Stop the child and wait for it; a later call starts a new one."""
        if self._process is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._conn.close()  # the child ends at end of pipe too, even in the middle of a file
        try:
            self._process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = self._conn = None

    def __enter__(self) -> DecoderProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _request(self, message: tuple) -> Connection:
        """Send one request, starting a child first if there is none or the last one died while idle."""
        if self._process is not None and self._process.poll() is not None:
            self._discard()
        if self._process is None:
            self._start()
        try:
            self._conn.send(message)
        except OSError:  # it died after the check above: the file is not to blame
            self._kill()
            self._start()
            self._conn.send(message)
        return self._conn

    def _reply(self, conn: Connection, path: Path, limit_s: float, budget_s: float):
        """The next answer (AudioInfo, a block, or None at the end), forwarding log records on the way.

        DecodeError for the child's own errors, and for a child that dies or is too slow (then it is gone).
        """
        wait_s = min(limit_s, budget_s)
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            if not conn.poll(max(deadline - time.monotonic(), 0.0)):
                self._kill()
                reason = (
                    f"no output for {limit_s:.0f} s"
                    if limit_s <= budget_s
                    else "past the time limit for the file's duration"
                )
                raise DecodeError(f"{path}: the decoder hung ({reason}) and was stopped")
            try:
                kind, *payload = conn.recv()
                if kind == "block":
                    block = np.empty(payload[0], dtype=np.float32)
                    conn.recv_bytes_into(block)
                    return block
            except (EOFError, OSError):
                raise DecodeError(f"{path}: the decoder crashed ({self._death()})") from None
            if kind == "log":
                _forward(*payload)
            elif kind == "error":
                raise DecodeError(payload[0])
            else:
                assert kind in ("info", "end"), f"decode process protocol: unexpected {kind!r}"
                return payload[0] if payload else None

    def _abandon(self, path: Path) -> None:
        """Tell the child to drop the current file and drain what it already sent, or replace it."""
        if self._process is None:
            return
        try:
            self._conn.send("stop")
            deadline = time.monotonic() + self.min_timeout_s
            while self._conn.poll(max(deadline - time.monotonic(), 0.0)):
                kind, *payload = self._conn.recv()
                if kind == "stopped":
                    return
                if kind == "block":
                    self._conn.recv_bytes()
                elif kind == "log":
                    _forward(*payload)
        except (EOFError, OSError):
            pass
        logger.debug("%s: the decoder did not stop cleanly; starting a new one", path)
        self._kill()

    def _start(self) -> None:
        parent_end, child_end = Pipe(duplex=True)
        serve_args = f"{child_end.fileno()}, {_forwarded_level()}, {os.getpid()}"
        self._process = _SPAWNER.submit(
            subprocess.Popen,
            python_code_command(f"from svdaemon.decoder import _serve; _serve({serve_args})"),
            pass_fds=(child_end.fileno(),),
            stdin=subprocess.DEVNULL,
        ).result()
        child_end.close()
        self._conn = parent_end
        if not parent_end.poll(_START_TIMEOUT_S) or _safe_recv(parent_end) != ("ready",):
            cause = self._death() if self._process.poll() is not None else "no answer"
            self._kill()
            raise EnvironmentFault(f"the decode process did not start ({cause})")
        logger.debug("decode process %d started", self._process.pid)

    def _death(self) -> str:
        """How the child ended, in words ("SIGSEGV", "exit code 1"); it is gone afterwards."""
        try:
            code = self._process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # the pipe broke, yet the process lives on
            code = None
        self._kill()
        if code is None:
            return "it closed its pipe"
        return _signal_name(-code) if code < 0 else f"exit code {code}"

    def _kill(self) -> None:
        """Kill the child (a no-op for one already reaped) and forget it."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._discard()

    def _discard(self) -> None:
        self._conn.close()
        self._conn = None
        self._process = None


def _decoded_s(duration_s: float, span: audio.SampleSpan | None) -> float:
    """The seconds of audio a decode of `span` (of a file of `duration_s`) produces, at most."""
    if span is None:
        return duration_s
    end_s = duration_s if span.end is None else min(duration_s, span.end / audio.SAMPLE_RATE)
    return max(0.0, end_s - span.first / audio.SAMPLE_RATE)


def _safe_recv(conn: Connection):
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _forwarded_level() -> int:
    """The lowest level the parent would log from `svdaemon`, so the child sends nothing that is dropped."""
    return logging.getLogger("svdaemon").getEffectiveLevel()


def _forward(name: str, level: int, message: str) -> None:
    """Log a record from the child as if it had been logged here, under the same logger name."""
    target = logging.getLogger(name)
    if target.isEnabledFor(level):
        target.handle(logging.LogRecord(name, level, "(decode process)", 0, message, None, None))


# The child's side.


class _PipeHandler(logging.Handler):
    """Sends log records to the parent as plain data: the name, the level and the formatted message."""

    def __init__(self, conn: Connection):
        super().__init__()
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        self._conn.send(("log", record.name, record.levelno, record.getMessage()))


def _serve(fd: int, level: int, parent_pid: int) -> None:
    """The child's loop: one request at a time until the parent says stop or goes away."""
    # Signals for the whole process group (Ctrl-C, systemd's stop) are the parent's to handle: it finishes
    # or requeues the current job, which needs this process alive, then closes the pipe, which ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    conn = Connection(fd)
    root = logging.getLogger()
    root.addHandler(_PipeHandler(conn))
    root.setLevel(level)
    conn.send(("ready",))
    try:
        while (request := conn.recv()) is not None:
            kind, *args = request
            if kind == "probe":
                _probe(conn, *args)
            elif kind == "decode":
                _decode(conn, *args)
            else:  # "stop" when no file was open, or after its end
                conn.send(("stopped",))
    except (EOFError, OSError):
        pass  # the parent is gone


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill this process when the parent goes (even by SIGKILL).

    A child that is decoding or idle notices the closed pipe by itself; one stuck inside FFmpeg would
    otherwise live on as an orphan after every crash of the daemon. The signal comes when the thread that
    started the child ends, not only the process, so children are started by `_SPAWNER`'s one thread, which
    lives as long as the process: a decoder used from a short-lived thread (a piece of a long file) keeps its
    child.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _probe(conn: Connection, path: Path, audio_language: str | None) -> None:
    try:
        reply = ("info", audio.probe(path, audio_language))
    except DecodeError as error:
        reply = ("error", str(error))
    conn.send(reply)


def _decode(
    conn: Connection,
    path: Path,
    audio_language: str | None,
    block_s: float,
    span: audio.SampleSpan | None,
    target: DecodeTarget,
) -> None:
    """Send the file's (or the span's) blocks, one per "next", until its end, an error, or "stop"."""
    blocks = target(path, block_s, audio_language, span)
    try:
        for block in blocks:
            conn.send(("block", block.size))
            conn.send_bytes(np.ascontiguousarray(block, dtype=np.float32))
            if conn.recv() != "next":  # "stop", or None from close(): the pipe's end follows
                conn.send(("stopped",))
                return
        conn.send(("end",))
    except DecodeError as error:
        conn.send(("error", str(error)))
    finally:
        blocks.close()
