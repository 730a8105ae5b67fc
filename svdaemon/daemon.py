"""`svdaemon run`: wiring of watcher → queue → worker, the control socket, signals and logs.

No business logic lives here: the watcher finds settled files, the queue keeps them, the worker runs
them, control answers the CLI. This module starts and stops those in the right order, holds the
single-instance lock, and turns signals into a clean stop (SIGTERM, SIGINT) or a config reload (SIGHUP).
Under systemd it speaks the notify protocol (`sd_notify`): READY=1 once the queue is recovered, and
WATCHDOG=1 only while the worker moves (`heartbeat`). It keeps the tray icon's process running beside it
(`supervise`).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from svdaemon import __version__
from svdaemon.child import python_module_command
from svdaemon.config import (
    Config,
    WatchRoot,
    default_watch_folder,
    effective_precision,
    load_config,
    with_new_watch,
)
from svdaemon.control import Command, ControlServer, DaemonState, DeviceChoice, Reply, StatusSnapshot
from svdaemon.cpu_threads import VAD_THREADS_BESIDE_ENGINE, engine_threads
from svdaemon.errors import StartupError, SvdaemonError
from svdaemon.fingerprint import Fingerprint
from svdaemon.gpus import free_mb, visible_gpus
from svdaemon.jobs import EnqueueResult, JobQueue
from svdaemon.owner import LockHeld, current_owner, hold_lock
from svdaemon.sd_notify import Notifier
from svdaemon.sidecars import HashStore, sweep_temp_files
from svdaemon.status_text import title
from svdaemon.supervise import Supervised
from svdaemon.watcher import FolderWatcher

if TYPE_CHECKING:
    from svdaemon.decoder import DecoderProcess
    from svdaemon.engine import VramReading
    from svdaemon.pipeline import Pipeline
    from svdaemon.worker import Worker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_STARTUP, EXIT_LOCKED = 0, 2, 75
STOP_TIMEOUT_S = 10.0
START_STEP_S = 90.0  # more start-up time asked of systemd for each slow step before READY=1
MAIN_LOOP_LIMIT_S = 30.0  # the main loop turns every 0.2 s; this long without a turn is a hang
STATUS_EVERY_S = 2.0  # how often systemd's STATUS= line is brought up to date (when it changed)
LOG_BYTES, LOG_BACKUPS = 5 * 2**20, 3


class AlreadyRunning(SvdaemonError):
    """Another svdaemon holds the state folder's lock."""


def hold_daemon_lock(state_dir: Path) -> int:
    """Take `state_dir/daemon.lock` for this process's life; AlreadyRunning names the holder."""
    try:
        return hold_lock(state_dir / "daemon.lock")
    except LockHeld as held:
        raise AlreadyRunning(f"another svdaemon (pid {held.holder}) is running with {state_dir}") from None


def wants_tray(setting: str, environ: Mapping[str, str]) -> bool:
    """`on`, or `auto` where there is a display to show it on (macOS and Windows: the session's)."""
    display = sys.platform in ("darwin", "win32") or bool(
        environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    )
    return setting == "on" or (setting == "auto" and display)


def decoder_count(cores: int | None = None) -> int:
    """Decode processes for files prepared at once: one per four cores, 1 to 4 (the rest feed VAD and torch)."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(4, cores // 4))


def _folders(watch: Sequence[WatchRoot]) -> str:
    return ", ".join(os.fsdecode(root.path) for root in watch) or "no folder"


def make_default_watch_folder(watch: Sequence[WatchRoot]) -> Path | None:
    """Make the built-in watch folder on first run, so a new user has somewhere to drop files; return it
    if it was made. A folder the user named is never made: a share not mounted yet must not become an
    empty local folder that hides it."""
    default = default_watch_folder()
    if default not in (root.path for root in watch) or default.exists():
        return None
    default.mkdir(parents=True)
    return default


def load_pipeline(config: Config, decoders: list[DecoderProcess]) -> Pipeline:
    """The pipeline as the daemon runs it: VAD on its own thread beside the engine, and the engine on the
    cores less the decode processes, so that svdaemon never oversubscribes the CPU (`cpu_threads`)."""
    from svdaemon.pipeline import Pipeline

    return Pipeline.load(
        config,
        threads=engine_threads(None, beside=len(decoders)),
        decoder=decoders[0],
        vad_threads=VAD_THREADS_BESIDE_ENGINE,
    )


def log_to_file(log_file: Path) -> None:
    handler = logging.handlers.RotatingFileHandler(
        log_file,
        maxBytes=LOG_BYTES,
        backupCount=LOG_BACKUPS,
        encoding="utf-8",
        errors="backslashreplace",  # a file name that is not UTF-8 must not lose its log line
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for existing in logging.getLogger().handlers:
        for log_filter in existing.filters:
            handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))


class Daemon:
    """The running daemon; `run` returns its exit code."""

    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.started_at_s = time.time()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.state = DaemonState.LOADING
        self.notifier = Notifier.from_environment()
        self.worker: Worker | None = None
        self.tray: Supervised | None = None
        self._turned_at = time.monotonic()  # the main loop's last turn, for the watchdog

    def run(self) -> int:
        from svdaemon.decoder import DecoderProcess
        from svdaemon.pipeline import BLOCK_S
        from svdaemon.worker import Worker

        try:
            lock = hold_daemon_lock(self.config.state_dir)
        except AlreadyRunning as error:
            log.error("%s", error)
            return EXIT_LOCKED
        try:
            log_to_file(self.config.log_file)
            made = make_default_watch_folder(self.config.watch)
            if made is not None:
                log.info("made the watch folder %s: recordings dropped there get transcripts", made)
            self._install_signals()
            self.notifier.extend_timeout(START_STEP_S, "removing temporary files left by a stopped daemon")
            sweep_temp_files(self.config.state_dir)
            HashStore(self.config.state_dir).sweep()
            self.notifier.extend_timeout(START_STEP_S, "opening the queue")
            self.queue = JobQueue.open(self.config.state_dir)
            recovered = self.queue.recover()
            if recovered:
                log.info("%d job(s) left running by a stopped daemon are queued again", recovered)
            self.notifier.ready("queue recovered; loading the model")
            with contextlib.ExitStack() as stack:
                if self.notifier.watchdog_s:
                    feeder = threading.Thread(
                        target=self._feed_watchdog, name="svdaemon-watchdog", daemon=True
                    )
                    feeder.start()
                    stack.callback(feeder.join)
                # Runs first on the way out, however the block is left: it ends the feeder before the join.
                stack.callback(self._stop.set)
                stack.enter_context(ControlServer(self.config.state_dir, self.snapshot, self.handle))
                decoders = [
                    stack.enter_context(DecoderProcess(block_s=BLOCK_S)) for _ in range(decoder_count())
                ]
                pipeline = load_pipeline(self.config, decoders)
                self.worker = Worker(self.queue, pipeline, self.config, current_owner(), decoders=decoders)
                self.watcher = self._watcher(self.config)
                self.worker.start()
                self.watcher.start()
                self.tray = self._start_tray()
                if self.tray is not None:
                    stack.callback(self.tray.stop)
                self.state = DaemonState.IDLE
                log.info(
                    "svdaemon %s on %s, watching %s",
                    __version__,
                    pipeline.engine.device,
                    _folders(self.config.watch),
                )
                self._serve()
                self.state = DaemonState.STOPPING
                self.notifier.stopping()
                self.watcher.stop()
                if not self.worker.stop(STOP_TIMEOUT_S):
                    log.warning("the worker did not stop within %.0f s", STOP_TIMEOUT_S)
            self.queue.close()
            return EXIT_OK
        finally:
            os.close(lock)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def _serve(self) -> None:
        said, said_at = None, 0.0
        self._turned_at = time.monotonic()
        while not self._stop.wait(0.2):
            self._turned_at = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config()
            if self.tray is not None:
                self.tray.poll()
            if self.notifier.active and self._turned_at - said_at >= STATUS_EVERY_S:
                said_at = self._turned_at
                said = self._say_status(said)

    def _say_status(self, said: str | None) -> str | None:
        """systemd's STATUS= line when it changed: the scan's progress, else the tray's title. A snapshot
        that cannot be taken now (a GPU gone bad, a busy database) must not end the main loop."""
        try:
            text = self.watcher.scanning or title(self.snapshot())
        except Exception as error:
            log.debug("no status line for systemd this time: %s", error)
            return said
        if text != said:
            self.notifier.status(text)
        return text

    def _start_tray(self) -> Supervised | None:
        """`svdaemon tray` beside the daemon when `tray` is on, or auto with a display."""
        if not wants_tray(self.config.tray, os.environ):
            return None
        config = ["--config", os.fsdecode(self.config_path)] if self.config_path else []
        tray = Supervised("the tray icon", python_module_command("svdaemon.cli", "tray", *config))
        tray.start()
        return tray

    def _feed_watchdog(self) -> None:
        """WATCHDOG=1 every half interval while the daemon is well; when it is not, silence makes systemd
        restart it (`Restart=on-failure`)."""
        reported = None
        while not self._stop.wait(self.notifier.watchdog_s / 2):
            why = self._unwell()
            if why is None:
                self.notifier.alive()
            elif why != reported:
                log.error("%s; no longer telling systemd's watchdog that svdaemon is alive", why)
            reported = why

    def _unwell(self) -> str | None:
        """Why the daemon is not working as it should, or None. Loading the model is not unwell: it ends
        or fails by itself."""
        if self.worker is None or self.state is DaemonState.LOADING:
            return None
        if not self.worker.alive:
            return "the worker thread has ended"
        silent_s = time.monotonic() - self._turned_at
        if silent_s > MAIN_LOOP_LIMIT_S:
            return f"the main loop has not turned for {silent_s:.0f} s"
        return self.worker.heartbeat.stuck()

    def _watcher(self, config: Config) -> FolderWatcher:
        return FolderWatcher(
            config.watch,
            [config.output_dir] if config.output_dir else [],
            self._on_ready,
            settle_s=config.settle_s,
            rescan_interval_s=config.rescan_interval_s,
        )

    def _on_ready(self, path: Path, root, st: os.stat_result) -> None:
        result = self.queue.enqueue(path, Fingerprint.of_stat(st), priority=root.priority, root=root.path)
        if result is not EnqueueResult.UNCHANGED:
            log.info("%s: queued (%s)", path, result.value)
            self.worker.wake()

    def _reload_config(self) -> None:
        """SIGHUP: new watch roots apply at once; a bad config is logged and the old one kept."""
        try:
            config, waiting = with_new_watch(self.config, load_config(self.config_path))
        except SvdaemonError as error:
            log.error("config not reloaded: %s", error)
            return
        self.watcher.stop()
        self.config = config
        if self.worker is not None:
            self.worker.config = config  # a new root's own formats, language and output_dir
        self.watcher = self._watcher(config)
        self.watcher.start()
        log.info("config reloaded: watching %s", _folders(config.watch))
        if waiting:
            log.warning("config: %s changed; that applies when svdaemon restarts", ", ".join(waiting))

    # ---- control --------------------------------------------------------------------------------------

    def snapshot(self) -> StatusSnapshot:
        worker = self.worker
        current = worker.current if worker else None
        pause_kind, pause_reason = (worker.standing_aside if worker else None) or (None, None)
        paused = pause_kind is not None
        state = self.state
        if state is DaemonState.IDLE and current is not None:
            state = DaemonState.WORKING
        if state in (DaemonState.IDLE, DaemonState.WORKING) and paused:
            state = DaemonState.PAUSED
        engine = worker.pipeline.engine if worker else None
        vram = engine.vram() if engine else None
        return StatusSnapshot(
            state=state,
            queue={job_state.value: count for job_state, count in self.queue.counts().items()},
            current_file=os.fsdecode(current.path) if current else None,
            progress=current.progress if current else None,
            audio_done_s=current.done_s if current else None,
            audio_total_s=current.duration_s if current else None,
            device=engine.device if engine else self.config.device,
            precision=engine.precision
            if engine
            else effective_precision(self.config.device, self.config.precision),
            vram_used_mb=vram.used_mb if vram else None,
            vram_total_mb=vram.total_mb if vram else None,
            paused=paused,
            pause_reason=pause_reason,
            pause_kind=pause_kind,
            last_error=worker.last_error if worker else None,
            pid=os.getpid(),
            started_at_s=self.started_at_s,
            version=__version__,
            vram_free_mb=vram.free_mb if vram else None,
            notice=engine.notice if engine else None,
            devices=self._devices(engine.device if engine else None, vram),
            watch=tuple(os.fsdecode(root.path) for root in self.config.watch),
            log_file=os.fsdecode(self.config.log_file),
        )

    @staticmethod
    def _devices(current: str | None, vram: VramReading | None) -> tuple[DeviceChoice, ...]:
        """Each GPU with its free memory (NVML, or the engine's own reading for its card), then the CPU."""
        gpus = visible_gpus()
        free = free_mb(gpus)
        if vram is not None and current is not None:
            free.setdefault(current, vram.free_mb)
        choices = [DeviceChoice(gpu.name, gpu.label, free.get(gpu.name), gpu.total_mb) for gpu in gpus]
        return (*choices, DeviceChoice("cpu", "CPU"))

    def handle(self, command: Command) -> Reply:
        worker = self.worker
        if command.name == "quit":
            self._stop.set()
            return Reply(True, "stopping")
        if worker is None:
            return Reply(False, "svdaemon is still loading the model; try again in a moment")
        if command.name == "pause":
            worker.pause()
            return Reply(True, "pausing after the current batch")
        if command.name == "resume":
            worker.resume()
            return Reply(True, "resumed")
        from svdaemon.engine import resolve_device

        try:
            target = resolve_device(command.argument)
        except StartupError as error:
            return Reply(False, str(error))
        worker.request_device(target)
        return Reply(True, f"moving to {target} after the current batch")
