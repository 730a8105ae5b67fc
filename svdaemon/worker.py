"""The worker thread: jobs from the queue, through the pipeline, to a recorded outcome each.

It claims up to MAX_AHEAD jobs at once: their decode and VAD run ahead on the prefetcher's threads, and
the speech ready from several files shares each pool of engine calls. Pause and stop act between engine
batches: the progress callback, called after each batch, is where the worker holds (pause), leaves the
file (stop: the job goes back to the queue, no attempt counted), switches device when asked, and steps
aside while another program needs the GPU's memory. A file is checked against its queued fingerprint before it is read, and again by the
pipeline before its sidecars are written, so changed content is never transcribed as the old one.
When the queue drains the engine gives its cached VRAM back; after `idle_unload_s` it holds none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from svdaemon.config import Config, WatchRoot
from svdaemon.decoder import Decoder
from svdaemon.engine import next_device
from svdaemon.errors import (
    DecodeError,
    DeviceLost,
    EnvironmentFault,
    SidecarError,
    SourceChanged,
    StartupError,
    SvdaemonError,
)
from svdaemon.fingerprint import Fingerprint
from svdaemon.heartbeat import Heartbeat
from svdaemon.jobs import ErrorKind, Job, JobQueue, JobState
from svdaemon.memory import MB, should_yield
from svdaemon.pipeline import Outcome, Pipeline
from svdaemon.prefetch import Prefetcher, Ready
from svdaemon.sidecars import ERROR_SIDECAR, existing_sidecars_newer_than, write_sidecars
from svdaemon.transcript import Segment

log = logging.getLogger(__name__)

PAUSE_POLL_S = 0.1
POOL_SPEECH_S = 600.0  # speech recognised per engine call, across files: short files share batches
MAX_AHEAD = 8  # jobs claimed at once (being prepared, waiting, or in the engine)
YIELD_POLL_S = 1.0  # how often free VRAM is read again while stepping aside


class _Leaving(Exception):
    """Raised in the progress callback to abandon the current file because the worker stops."""


@dataclass
class EngineUsage:
    """How much of the time the worker had files in hand the engine was running: the rest is the GPU idling
    while decode, VAD or sidecar writes kept it waiting."""

    working_s: float = 0.0
    engine_s: float = 0.0

    @property
    def busy_share(self) -> float:
        return self.engine_s / self.working_s if self.working_s > 0 else 0.0

    def describe(self) -> str:
        return f"the engine ran {self.busy_share:.0%} of {self.working_s:.1f} s with files in hand"


@dataclass
class WorkClock:
    """Seconds that count toward a file's × realtime: wall time less the time the worker was held (paused by
    the user, or standing aside for another program or a lost GPU), which says nothing of its speed."""

    now: Callable[[], float] = time.perf_counter
    held_s: float = 0.0
    held_since: float | None = None

    def hold(self) -> None:
        if self.held_since is None:
            self.held_since = self.now()

    def go(self) -> None:
        if self.held_since is not None:
            self.held_s += self.now() - self.held_since
            self.held_since = None

    def read(self) -> float:
        now = self.now()
        return now - self.held_s - (now - self.held_since if self.held_since is not None else 0.0)


@dataclass
class _Active:
    """A claimed job on its way: its root's settings and the segments recognised so far."""

    job: Job
    formats: tuple[str, ...]
    language: str
    output_dir: Path | None
    started_s: float
    segments: list[Segment] = field(default_factory=list)
    done_s: float = 0.0


@dataclass(frozen=True)
class CurrentFile:
    """The file being transcribed and how far, for the status snapshot; its length once probed."""

    path: Path
    done_s: float
    duration_s: float | None = None

    @property
    def progress(self) -> float | None:
        return min(self.done_s / self.duration_s, 1.0) if self.duration_s else None


class Worker:
    """Claims jobs for `owner` and runs them; `start`/`stop` the thread, `pause`/`resume` between batches."""

    def __init__(
        self,
        queue: JobQueue,
        pipeline: Pipeline,
        config: Config,
        owner: str,
        idle_wait_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        decoders: list[Decoder] | None = None,
    ) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.decoders = decoders or [pipeline.decoder]  # files prepared at once: one per decoder
        self.config = config
        self.owner = owner
        self.idle_wait_s = idle_wait_s
        self.current: CurrentFile | None = None
        self.last_error: str | None = None
        self._short_of_vram: str | None = None  # another program needs the card's memory
        self._no_device: str | None = None  # the GPU failed and there is nowhere to go on
        self._clock = clock
        self._stopping = threading.Event()
        self._running = threading.Event()  # cleared while paused by the user
        self._running.set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._device_request: str | None = None
        self._idle_since: float | None = None
        self._prefetch: Prefetcher | None = None
        self._active: dict[int, _Active] = {}  # claimed jobs by id, in claim order
        self._held: Ready | None = None  # a ready chunk kept for the next pool (another language)
        self.usage = EngineUsage()
        self._work_clock = WorkClock()
        self.heartbeat = Heartbeat()  # beaten at every step; the daemon feeds systemd's watchdog from it

    # ---- control --------------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def yielding(self) -> str | None:
        """Why the worker stands aside on its own, or None."""
        return self._no_device or self._short_of_vram

    @property
    def standing_aside(self) -> tuple[str, str] | None:
        """Why it stands aside, as (kind, words): kind `user`, `no_device` or `vram` (another program needs
        the card's memory); None while it runs."""
        if self.paused:
            return "user", "user"
        if self._no_device:
            return "no_device", self._no_device
        return ("vram", self._short_of_vram) if self._short_of_vram else None

    def request_device(self, spec: str) -> None:
        """Move the model to `spec` after the current batch and go on with the same file there."""
        self._device_request = spec
        self._wake.set()

    def pause(self) -> None:
        """Hold after the current batch; the file goes on from there on `resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        self._wake.set()

    def wake(self) -> None:
        """A job was queued: look now instead of after the idle wait."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="svdaemon-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop claiming; the files in hand are abandoned after the batch and requeued. True when joined."""
        self._stopping.set()
        self._wake.set()
        joined = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            joined = not self._thread.is_alive()
        if joined:
            self._abandon_all("left unfinished at stop; it stays queued")
            if self._prefetch is not None:
                self._prefetch.close()
                self._prefetch = None
        return joined

    # ---- work -----------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """The thread runs (an exception that escaped it would have ended it)."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.heartbeat.beat()
            if self.paused or self.yielding is not None:
                self._work_clock.hold()
            else:
                self._work_clock.go()
            if not self.paused:
                self._between_batches()
                if self.yielding is None and self.run_once():
                    self._idle_since = None
                    continue
                self._idle()
            self._wake.wait(self.idle_wait_s)
            self._wake.clear()

    def _idle(self) -> None:
        """Queue drained: give the cached VRAM back at once, and all of it after `idle_unload_s`."""
        engine = self.pipeline.engine
        now = self._clock()
        if self._idle_since is None:
            self._idle_since = now
            engine.release_cache()
            if self.usage.working_s > 0:
                log.info("queue drained; %s", self.usage.describe())
        elif now - self._idle_since >= self.config.idle_unload_s:
            self.unload()

    def unload(self) -> None:
        """Give the device back entirely: the model's weights and the VAD's; the next job loads them again."""
        self.pipeline.vad.move_to("cpu")  # first: the engine's unload then also returns the cache VAD leaves
        self.pipeline.engine.unload()

    def _between_batches(self) -> None:
        """Where a device switch happens and where the worker steps aside while the card is short of memory."""
        spec, self._device_request = self._device_request, None
        if spec is not None:
            self._move_to(spec)
        engine = self.pipeline.engine
        reading = engine.vram()
        while reading is not None and should_yield(
            reading.free_mb * MB, self.config.vram_floor_mb, yielded=self._short_of_vram is not None
        ):
            if self._short_of_vram is None:
                self._work_clock.hold()
                engine.release_cache()
                self._short_of_vram = (
                    f"another program needs the GPU's memory ({reading.free_mb} MB free on {engine.device})"
                )
                log.warning("%s; svdaemon steps aside until it is back", self._short_of_vram)
            if self._stopping.wait(YIELD_POLL_S) or self._device_request is not None:
                return
            self.heartbeat.beat()
            reading = engine.vram()
        if self._short_of_vram is not None:
            self._work_clock.go()
            log.info("GPU memory is back (%d MB free); going on", reading.free_mb if reading else 0)
            self._short_of_vram = None

    def _move_to(self, spec: str) -> None:
        try:
            self.pipeline.engine.move_to(spec)
        except StartupError as error:
            self.last_error = str(error)
            log.error("device not changed: %s", error)
            return
        self._no_device = self._short_of_vram = None
        self._place_vad()

    def _place_vad(self) -> None:
        """VAD runs where the engine's model is, and leaves the card with it (0 MB after an idle unload)."""
        engine = self.pipeline.engine
        self.pipeline.vad.move_to(engine.device if engine.loaded else "cpu")

    def run_once(self) -> bool:
        """Claim what can be prepared ahead, recognise one pool of ready speech, finish the jobs it completes.

        False when there was nothing to do.
        """
        if self._prefetch is None:
            self._prefetch = Prefetcher(
                self.pipeline.speech_chunks, self.decoders, max_speech_s=2 * POOL_SPEECH_S
            )
            self._prefetch.start()
        claimed = self._claim_ahead()
        if not self._active:
            return claimed > 0
        first = next(iter(self._active.values()))
        self.current = CurrentFile(first.job.path, first.done_s)
        self.pipeline.engine.ensure_loaded()
        self._place_vad()
        started = time.perf_counter()
        try:
            pool = self._gather_pool()
            if pool:
                engine_started = time.perf_counter()
                self._recognise_pool(pool)
                self.usage.engine_s += time.perf_counter() - engine_started
        finally:
            self.current = None
            self.usage.working_s += time.perf_counter() - started
        return True

    def _claim_ahead(self) -> int:
        """Keep the prefetcher fed: claim up to MAX_AHEAD jobs while it holds less than a pool of speech.

        Returns how many jobs were claimed (some end at once: gone, changed, skipped).
        """
        prefetch = self._prefetch
        claimed = 0
        while (
            len(self._active) < MAX_AHEAD and prefetch.held_s < POOL_SPEECH_S and not self._stopping.is_set()
        ):
            job = self.queue.claim(self.owner)
            if job is None:
                break
            claimed += 1
            active = self._admit(job)
            if active is not None:
                self._active[job.id] = active
                prefetch.submit(job)
        return claimed

    def _admit(self, job: Job) -> _Active | None:
        """The job with its root's settings if it is to be transcribed; else its outcome is recorded here."""
        try:
            now = Fingerprint.of(job.path)
        except FileNotFoundError:
            log.info("%s: gone before it was transcribed; forgotten", job.path)
            self.queue.forget(job.path)
            return None
        except OSError as error:
            self._record(job, DecodeError(f"{job.path}: cannot read ({error.strerror or error})"))
            return None
        if now != job.fingerprint:
            log.info("%s: changed since it was queued; waiting for it to settle", job.path)
            self.queue.requeue(job, now, delay_s=self.config.settle_s)
            return None
        root = self._root_of(job)
        active = _Active(
            job,
            formats=(root.formats if root else None) or self.config.formats,
            language=(root.language if root else None) or self.config.language,
            output_dir=root.output_dir if root else None,
            started_s=self._work_clock.read(),
        )
        if self.config.skip_existing and existing_sidecars_newer_than(
            job.path,
            active.formats,
            language=None if active.language == "auto" else active.language,
            settings=self.pipeline.sidecar_settings_for(active.output_dir),
            store=self.pipeline.store,
            root=job.root,
        ):
            self.queue.skip(job, "its sidecars exist and are newer")
            return None
        return active

    def _root_of(self, job: Job) -> WatchRoot | None:
        """The watch root the job came from, for its own settings; None for a root no longer configured."""
        return next((root for root in self.config.watch if root.path == job.root), None)

    def _gather_pool(self) -> list[Ready]:
        """Ready chunks of one spoken language, up to POOL_SPEECH_S: short files from several jobs share
        batches. Waits for the first; a preparation error is recorded for its job on the way."""
        pool: list[Ready] = []
        while not self._stopping.is_set():
            self.heartbeat.beat()
            ready = self._next_ready(PAUSE_POLL_S if not pool else 0)
            if ready is None:
                if pool or not self._active:
                    break
                continue
            if ready.error is not None:
                self._active.pop(ready.job.id, None)
                self._record(ready.job, ready.error)
                continue
            if pool and self._active[ready.job.id].language != self._active[pool[0].job.id].language:
                self._held = ready
                break
            pool.append(ready)
            if sum(r.chunk.speech_s for r in pool) >= POOL_SPEECH_S:
                break
        return pool

    def _next_ready(self, timeout_s: float) -> Ready | None:
        held, self._held = self._held, None
        return held or self._prefetch.get(timeout_s)

    def _recognise_pool(self, pool: list[Ready]) -> None:
        lead = self._active[pool[0].job.id]
        self.current = CurrentFile(lead.job.path, lead.done_s, pool[0].chunk.duration_s)
        pieces = [piece for ready in pool for piece in ready.chunk.pieces]
        try:
            segments = self.pipeline.engine.recognize(pieces, self._progress(lead, pool[0]), lead.language)
        except _Leaving:
            self._abandon_all("left unfinished at stop; it stays queued")
            return
        except DeviceLost as error:
            self.last_error = f"{lead.job.path}: {error}"
            log.error("%s; the file stays queued", self.last_error)
            self._abandon_all("back in the queue after the GPU failed")
            self._after_device_loss(str(error))
            return
        except EnvironmentFault as error:
            for ready in pool:
                if self._active.pop(ready.job.id, None) is not None:
                    self._record(ready.job, error)
            self._abandon_all("back in the queue after an environment fault")
            return
        start = 0
        for ready in pool:
            active = self._active[ready.job.id]
            count = len(ready.chunk.pieces)
            active.segments.extend(segments[start : start + count])
            start += count
            active.done_s = ready.chunk.to_s
            if ready.chunk.last:
                self._complete(self._active.pop(ready.job.id), ready.chunk.to_s)

    def _complete(self, active: _Active, duration_s: float) -> None:
        job = active.job
        transcript = self.pipeline.transcript(job.path, active.segments, duration_s)
        try:
            sidecars = self.pipeline.write(
                transcript, job.fingerprint, job.root, active.formats, active.output_dir
            )
        except SourceChanged as error:
            log.info("%s", error)
            try:
                self.queue.requeue(job, Fingerprint.of(job.path), delay_s=self.config.settle_s)
            except FileNotFoundError:
                self.queue.forget(job.path)
        except (SidecarError, EnvironmentFault) as error:
            self._record(job, error)
        else:
            # Sidecars kept as the user's (the overwrite policy) are their decision: done, no attempt counted.
            self.queue.finish(job, sidecars.kept_note() or None)
            outcome = Outcome(job.path, transcript, sidecars, self._work_clock.read() - active.started_s)
            log.info("%s%s", job.path, outcome.describe(f"{transcript.duration_s:.1f} s"))

    def _abandon_all(self, why: str) -> None:
        """Every claimed job back to the queue without an attempt; nothing prepared is kept."""
        if self._prefetch is not None:
            self._prefetch.cancel()
        self._held = None
        for active in self._active.values():
            log.info("%s: %s", active.job.path, why)
            self.queue.requeue(active.job)
        self._active.clear()

    def _after_device_loss(self, cause: str) -> None:
        """Go on on the next GPU, or the CPU when `fallback_to_cpu`; else stand aside with the cause shown."""
        failed = self.pipeline.engine.device
        target = next_device(failed, gpu_free_memory(), self.config.fallback_to_cpu)
        if target is not None:
            log.warning("%s failed; going on on %s", failed, target)
            self._move_to(target)
        else:
            self._no_device = (
                f"{cause}; no other device (set fallback_to_cpu or choose one with svdaemon device)"
            )
            log.error("%s", self._no_device)

    def _progress(self, lead: _Active, first: Ready):
        """After each batch: show the lead file's progress, then switch device, step aside, pause or stop."""
        span = first.chunk.to_s - first.chunk.from_s

        def report(fraction: float) -> None:
            self.heartbeat.beat()
            self.current = CurrentFile(
                lead.job.path, first.chunk.from_s + fraction * span, first.chunk.duration_s
            )
            self._between_batches()
            if self.paused:
                self._work_clock.hold()
            while self.paused and not self._stopping.is_set():
                self._stopping.wait(PAUSE_POLL_S)
                self.heartbeat.beat()
            self._work_clock.go()
            if self._stopping.is_set():
                raise _Leaving

        return report

    def _record(self, job: Job, error: Exception) -> None:
        """A bad file counts an attempt; an environment fault (GPU, disk) never does."""
        kind = ErrorKind.ENVIRONMENT if isinstance(error, EnvironmentFault) else ErrorKind.BAD_FILE
        self.last_error = str(error)
        state = self.queue.fail(job, str(error), kind, self.config.max_attempts)
        if state is JobState.FAILED:
            log.error("%s (failed for good after %d attempts)", error, self.config.max_attempts)
            if self.config.error_sidecar:
                self._write_error_sidecar(job, str(error))
        else:
            log.warning("%s (%s; will retry)", error, kind.value.replace("_", " "))

    def _write_error_sidecar(self, job: Job, message: str) -> None:
        """`name.error.txt` beside the file (or in its root's output folder), under its sidecars' rules."""
        root = self._root_of(job)
        try:
            kept = write_sidecars(
                job.path,
                {ERROR_SIDECAR: message + "\n"},
                language="",
                settings=self.pipeline.sidecar_settings_for(root.output_dir if root else None),
                store=self.pipeline.store,
                root=job.root,
            ).kept_note()
        except SvdaemonError as error:
            log.warning("%s: no error sidecar written: %s", job.path, error)
        else:
            if kept:
                log.info("%s: no error sidecar written: %s", job.path, kept)


def gpu_free_memory() -> list[int]:
    """Free bytes on each visible GPU now; a GPU that cannot be read counts as having none."""
    import torch

    if not torch.cuda.is_available():
        return []
    free = []
    for index in range(torch.cuda.device_count()):
        try:
            free.append(torch.cuda.mem_get_info(index)[0])
        except RuntimeError:
            free.append(0)
    return free
