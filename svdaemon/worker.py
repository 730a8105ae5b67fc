"""The worker thread: one job at a time from the queue, through the pipeline, to a recorded outcome.

Pause and stop act between engine batches: the pipeline's progress callback, called after each batch, is
where the worker holds (pause) or leaves the file (stop: the job goes back to the queue, no attempt
counted). A file is checked against its queued fingerprint before it is read, and again by the pipeline
before its sidecars are written, so changed content is never transcribed as the old one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from svdaemon.config import Config
from svdaemon.errors import DecodeError, EnvironmentFault, SidecarError, SourceChanged, SvdaemonError
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import ErrorKind, Job, JobQueue, JobState
from svdaemon.pipeline import Pipeline
from svdaemon.sidecars import ERROR_SIDECAR, existing_sidecars_newer_than, write_sidecars

log = logging.getLogger(__name__)

PAUSE_POLL_S = 0.1


class _Leaving(Exception):
    """Raised in the progress callback to abandon the current file because the worker stops."""


@dataclass(frozen=True)
class CurrentFile:
    """The file being transcribed and how far, for the status snapshot."""

    path: Path
    done_s: float


class Worker:
    """Claims jobs for `owner` and runs them; `start`/`stop` the thread, `pause`/`resume` between batches."""

    def __init__(
        self, queue: JobQueue, pipeline: Pipeline, config: Config, owner: str, idle_wait_s: float = 1.0
    ) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.config = config
        self.owner = owner
        self.idle_wait_s = idle_wait_s
        self.current: CurrentFile | None = None
        self.last_error: str | None = None
        self._stopping = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- control --------------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

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
        """Stop claiming; the current file is abandoned after its batch and requeued. True when joined."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # ---- work -----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if self.paused or not self.run_once():
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()

    def run_once(self) -> bool:
        """Claim and run one job; False when none was due."""
        job = self.queue.claim(self.owner)
        if job is None:
            return False
        self.current = CurrentFile(job.path, 0.0)
        try:
            self._run(job)
        finally:
            self.current = None
        return True

    def _run(self, job: Job) -> None:
        try:
            now = Fingerprint.of(job.path)
        except FileNotFoundError:
            log.info("%s: gone before it was transcribed; forgotten", job.path)
            self.queue.forget(job.path)
            return
        except OSError as error:
            self._record(job, DecodeError(f"{job.path}: cannot read ({error.strerror or error})"))
            return
        if now != job.fingerprint:
            log.info("%s: changed since it was queued; waiting for it to settle", job.path)
            self.queue.requeue(job, now, delay_s=self.config.settle_s)
            return
        root = next((r for r in self.config.watch if r.path == job.root), None)
        formats = (root.formats if root else None) or self.config.formats
        language = (root.language if root else None) or self.config.language
        output_dir = root.output_dir if root else None
        settings = self.pipeline.sidecar_settings
        if self.config.skip_existing and existing_sidecars_newer_than(
            job.path,
            formats,
            language=None if language == "auto" else language,
            settings=replace(settings, output_dir=output_dir) if output_dir else settings,
            store=self.pipeline.store,
            root=job.root,
        ):
            self.queue.skip(job, "its sidecars exist and are newer")
            return
        try:
            outcome = self.pipeline.process(
                job.path,
                root=job.root,
                progress=self._progress(job),
                formats=formats,
                language=language,
                output_dir=output_dir,
            )
        except _Leaving:
            log.info("%s: left unfinished at stop; it stays queued", job.path)
            self.queue.requeue(job)
        except SourceChanged as error:
            log.info("%s", error)
            self.queue.requeue(job, Fingerprint.of(job.path), delay_s=self.config.settle_s)
        except (DecodeError, SidecarError, EnvironmentFault) as error:
            self._record(job, error)
        else:
            self.queue.finish(job)
            log.info(
                "%s: done (%.1f s of audio, %.1f× realtime)",
                job.path,
                outcome.transcript.duration_s,
                outcome.realtime_factor,
            )

    def _progress(self, job: Job):
        def report(done_s: float) -> None:
            self.current = CurrentFile(job.path, done_s)
            while self.paused and not self._stopping.is_set():
                self._stopping.wait(PAUSE_POLL_S)
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
        """`name.error.txt` beside the file, under the same naming and overwrite rules as its sidecars."""
        try:
            write_sidecars(
                job.path,
                {ERROR_SIDECAR: message + "\n"},
                language="",
                settings=self.pipeline.sidecar_settings,
                store=self.pipeline.store,
                root=job.root,
            )
        except SvdaemonError as error:
            log.warning("%s: no error sidecar written: %s", job.path, error)
