"""Watcher: finds recordings in the watched folders and hands each one on once it has stopped changing.

Events are hints, the scan is the truth. Observer events only say where to look; a full scan runs at
start, every `rescan_interval_s`, whenever a root appears, and after any observer trouble (watchdog only
logs an inotify overflow, so its log records are the signal). A file is handed on after its size and
mtime stayed unchanged for `settle_s`, and again only if its fingerprint changes: the job queue dedupes
across restarts, this only keeps the callback quiet between scans.

The policy (names, globs, settle, scan, mount type) is plain functions over plain data with the clock and
the file-system probes injectable; `FolderWatcher` is the thin threaded layer over watchdog.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import logging
import os
import re
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import DirCreatedEvent, DirMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import inotify_c
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from svdaemon.config import WatchRoot
from svdaemon.fingerprint import Fingerprint

log = logging.getLogger(__name__)

# fmt: off
MEDIA_EXTENSIONS = frozenset({
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".mka", ".amr",
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".wmv", ".3gp",
})
# Names that are still being written by a browser, a sync tool or us; checked before the hidden rule so the
# reason names them.
_TEMP_NAMES = ("*.part", "*.crdownload", "*.tmp", "~$*", ".syncthing.*.tmp", ".svdaemon-*.tmp")
_RSYNC_TEMP = re.compile(r"\..+\.[A-Za-z0-9]{6}")
# File systems whose changes made elsewhere never reach inotify.
_NETWORK_FS = frozenset({
    "cifs", "smb3", "smbfs", "nfs", "nfs4", "ncpfs", "afs", "9p", "virtiofs", "davfs", "sshfs", "fuse",
    "glusterfs", "ceph", "lustre",
})
# fmt: on
_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")
# watchdog reports inotify overflow and failed re-watching only as log records below this logger.
_WATCHDOG_LOGGER = "watchdog.observers"
SCAN_REPORT_EVERY = 1000  # recordings between updates of `FolderWatcher.scanning`

StatFn = Callable[[str], os.stat_result]
ListdirFn = Callable[[str], Iterable[str]]
OnReady = Callable[[Path, WatchRoot, os.stat_result], None]


def skip_reason(path: Path, root: WatchRoot, output_dirs: Iterable[Path]) -> str | None:
    """Why `path` (a file under `root`) is not a recording to transcribe, or None when it is."""
    try:
        relative = path.relative_to(root.path)
    except ValueError:
        return "outside the watched folder"
    name = path.name
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in _TEMP_NAMES) or _RSYNC_TEMP.fullmatch(name):
        return "temporary or partial file"
    if any(part.startswith(".") for part in relative.parts):
        return "hidden"
    if not root.recursive and len(relative.parts) > 1:
        return "in a subfolder of a non-recursive watched folder"
    if any(path.is_relative_to(out) for out in _all_output_dirs(root, output_dirs)):
        return "inside an output folder"
    if path.suffix.lower() not in MEDIA_EXTENSIONS:
        return "not an audio or video file"
    relative_text = relative.as_posix()
    if root.include and not _matches(name, relative_text, root.include):
        return "not matched by include"
    if _matches(name, relative_text, root.exclude):
        return "matched by exclude"
    return None


def is_candidate(path: Path, root: WatchRoot, output_dirs: Iterable[Path]) -> bool:
    return skip_reason(path, root, output_dirs) is None


def _matches(name: str, relative: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(relative, p) for p in patterns)


def _all_output_dirs(root: WatchRoot, output_dirs: Iterable[Path]) -> list[Path]:
    return [*output_dirs, *([root.output_dir] if root.output_dir is not None else [])]


def _folder_skipped(folder: Path, root: WatchRoot, output_dirs: Iterable[Path]) -> bool:
    """A folder whose files could never be candidates: not worth listing."""
    relative = folder.relative_to(root.path)
    if relative.parts and not root.recursive:
        return True
    if any(part.startswith(".") for part in relative.parts):
        return True
    return any(folder.is_relative_to(out) for out in _all_output_dirs(root, output_dirs))


class SettleTracker:
    """Files seen but not yet handed on, each with when its (size, mtime, inode) last changed.

    `ready` re-stats every pending file: one still growing keeps resetting its clock, one gone is dropped.
    A file handed on is remembered with its state so a rescan does not hand it on again unless it changed.
    """

    def __init__(self, settle_s: float, clock: Callable[[], float], stat: StatFn = os.stat) -> None:
        self._settle_s = settle_s
        self._clock = clock
        self._stat = stat
        self._pending: dict[Path, tuple[Fingerprint, float]] = {}
        self._reported: dict[Path, Fingerprint] = {}

    def observe(self, path: Path, st: os.stat_result) -> None:
        state = Fingerprint.of_stat(st)
        if self._reported.get(path) == state:
            return
        previous = self._pending.get(path)
        if previous is None or previous[0] != state:
            self._pending[path] = (state, self._clock())

    def ready(self) -> list[tuple[Path, os.stat_result]]:
        """Pending files unchanged for `settle_s`, removed from pending; call `mark_reported` once handed on."""
        now = self._clock()
        settled = []
        for path, (state, changed_at) in list(self._pending.items()):
            try:
                st = self._stat(os.fspath(path))
            except OSError:
                log.debug("%s: gone before it settled", path)
                del self._pending[path]
                continue
            current = Fingerprint.of_stat(st)
            if current != state:
                self._pending[path] = (current, now)
            elif now - changed_at >= self._settle_s:
                del self._pending[path]
                settled.append((path, st))
        return settled

    def mark_reported(self, path: Path, st: os.stat_result) -> None:
        self._reported[path] = Fingerprint.of_stat(st)

    def forget_missing(self, under: Path, seen: set[Path]) -> None:
        """After a full scan of `under`: drop what is remembered there but was not seen (deleted files)."""
        for path in [p for p in self._reported if p.is_relative_to(under) and p not in seen]:
            del self._reported[path]

    @property
    def pending(self) -> int:
        return len(self._pending)


def scan_root(
    root: WatchRoot,
    output_dirs: Iterable[Path],
    *,
    under: Path | None = None,
    listdir: ListdirFn = os.listdir,
    stat: StatFn = os.stat,
) -> Iterator[tuple[Path, os.stat_result]]:
    """Every candidate file of `root` (or of its folder `under`) with its stat.

    Symlinked folders are followed, but a folder already visited (same st_dev, st_ino) is not entered
    again, so a link loop ends. Unreadable or vanished entries are skipped (logged at DEBUG). Names are
    str as `os.listdir` gives them: bytes that are not UTF-8 come through as surrogate escapes.
    """
    output_dirs = list(output_dirs)
    visited: set[tuple[int, int]] = set()
    stack = [under if under is not None else root.path]
    while stack:
        folder = stack.pop()
        if _folder_skipped(folder, root, output_dirs):
            continue
        try:
            folder_stat = stat(os.fspath(folder))
            if (folder_stat.st_dev, folder_stat.st_ino) in visited:
                log.debug("%s: already visited (a symlink loop or a second link); not entered again", folder)
                continue
            visited.add((folder_stat.st_dev, folder_stat.st_ino))
            names = sorted(listdir(os.fspath(folder)))
        except OSError as err:
            log.debug("%s: cannot list: %s", folder, err.strerror or err)
            continue
        for name in names:
            path = folder / name
            try:
                st = stat(os.fspath(path))
            except OSError as err:
                log.debug("%s: cannot stat: %s", path, err.strerror or err)
                continue
            if stat_module.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat_module.S_ISREG(st.st_mode) and is_candidate(path, root, output_dirs):
                yield path, st


def parse_mounts(mounts_text: str) -> list[tuple[str, str]]:
    """(mount point, fs type) pairs from /proc/self/mounts text, octal escapes (`\\040`) decoded."""
    mounts = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
            mounts.append((point, fields[2]))
    return mounts


def needs_polling(path: Path, mounts_text: str) -> bool:
    """Whether `path` lies on a network or FUSE file system (longest matching mount point decides)."""
    target = os.path.realpath(path)
    best_point, best_type = "", ""
    for point, fs_type in parse_mounts(mounts_text):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best_point):
            best_point, best_type = point, fs_type
    return best_type in _NETWORK_FS or best_type.startswith("fuse.")


def use_polling(root: WatchRoot, mounts_text: str) -> bool:
    """`polling: true` forces the polling observer, `false` forbids it, `auto` asks the mount table."""
    return needs_polling(root.path, mounts_text) if root.polling == "auto" else bool(root.polling)


def _read_mounts() -> str:
    try:
        return Path("/proc/self/mounts").read_text(errors="replace")
    except OSError:
        return ""


class _TroubleHandler(logging.Handler):
    """Turns watchdog's warnings (inotify overflow, failed re-watch, failed poll) into a rescan request."""

    def __init__(self, on_trouble: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_trouble = on_trouble

    def emit(self, record: logging.LogRecord) -> None:
        self._on_trouble(record.getMessage())


class _Hints(FileSystemEventHandler):
    """Collects observer events for one root as paths to look at; the supervisor drains them."""

    def __init__(self, watcher: FolderWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        path = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            self._watcher._hint(Path(path), folder=True)
        elif not event.is_directory:
            self._watcher._hint(Path(path), folder=False)


@dataclass
class _RootState:
    """One root's live watch: observer kind, scheduled watch, the folder it watches, whether we warned."""

    root: WatchRoot
    polling: bool
    watch: ObservedWatch | None = None
    identity: tuple[int, int] | None = None
    warned: bool = False


class FolderWatcher:
    """Watches `roots` and calls `on_ready(path, root, stat)` for each recording once it has settled.

    All observer management, scanning and callbacks happen on one supervisor thread, woken every `tick_s`.
    """

    def __init__(
        self,
        roots: Sequence[WatchRoot],
        output_dirs: Iterable[Path],
        on_ready: OnReady,
        settle_s: float,
        rescan_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        tick_s: float = 1.0,
        read_mounts: Callable[[], str] = _read_mounts,
    ) -> None:
        self._roots = list(roots)
        self._output_dirs = list(output_dirs)
        self._on_ready = on_ready
        self._rescan_interval_s = rescan_interval_s
        self._clock = clock
        self._tick_s = tick_s
        self._read_mounts = read_mounts
        self._tracker = SettleTracker(settle_s, clock)
        self.scanning: str | None = None  # while a full scan runs: where, and how far (systemd's STATUS=)
        self._lock = threading.Lock()
        self._file_hints: set[Path] = set()
        self._folder_hints: set[Path] = set()
        self._rescan_requested = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._trouble = _TroubleHandler(self._on_trouble)
        self._observers: dict[bool, BaseObserver] = {}
        self._states: list[_RootState] = []

    def start(self) -> None:
        mounts = self._read_mounts()
        self._states = [_RootState(root, use_polling(root, mounts)) for root in self._roots]
        logging.getLogger(_WATCHDOG_LOGGER).addHandler(self._trouble)
        self._thread = threading.Thread(target=self._supervise, name="svdaemon-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops watching and joins every thread it started (observers included)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        logging.getLogger(_WATCHDOG_LOGGER).removeHandler(self._trouble)

    def rescan(self) -> None:
        """Asks for a full scan of every root at the next tick."""
        with self._lock:
            self._rescan_requested = True
        self._wake.set()

    def _on_trouble(self, message: str) -> None:
        log.info("watcher: observer reported trouble (%s); rescanning", message)
        self.rescan()

    def _hint(self, path: Path, folder: bool) -> None:
        with self._lock:
            (self._folder_hints if folder else self._file_hints).add(path)

    def _supervise(self) -> None:
        next_rescan = self._clock()  # the first tick scans everything
        try:
            while not self._stopping.is_set():
                try:
                    next_rescan = self._tick(next_rescan)
                except Exception:  # the supervisor must outlive any one bad tick
                    log.exception("watcher: unexpected error; going on")
                self._wake.wait(self._tick_s)
                self._wake.clear()
        finally:
            self._stop_observers()

    def _tick(self, next_rescan: float) -> float:
        appeared = self._check_roots()
        self._check_observers()
        with self._lock:
            files, folders = self._file_hints, self._folder_hints
            self._file_hints, self._folder_hints = set(), set()
            rescan, self._rescan_requested = self._rescan_requested, False
        if rescan or self._clock() >= next_rescan:
            next_rescan = self._clock() + self._rescan_interval_s
            appeared = [s for s in self._states if s.watch is not None]
        for state in appeared:
            self._scan(state.root)
        for folder in folders:
            state = self._state_for(folder)
            if state is None:
                continue
            if not state.polling and inotify_watch_limit_reached(folder):
                self._fall_back_to_polling(state)
            self._scan(state.root, under=folder)
        for path in files:
            self._observe_one(path)
        self._hand_on()
        return next_rescan

    def _scan(self, root: WatchRoot, under: Path | None = None) -> None:
        seen = set()
        try:
            for path, st in scan_root(root, self._output_dirs, under=under):
                seen.add(path)
                self._tracker.observe(path, st)
                if under is None and len(seen) % SCAN_REPORT_EVERY == 0:
                    self.scanning = f"scanning {root.path}: {len(seen):,} recordings so far"
        finally:
            self.scanning = None
        if under is None:
            self._tracker.forget_missing(root.path, seen)
            log.debug(
                "watcher: scanned %s: %d recordings, %d settling", root.path, len(seen), self._tracker.pending
            )

    def _observe_one(self, path: Path) -> None:
        state = self._state_for(path)
        if state is None or not is_candidate(path, state.root, self._output_dirs):
            return
        try:
            st = os.stat(path)
        except OSError:
            return  # deleted or moved away: nothing to do
        if stat_module.S_ISREG(st.st_mode):
            self._tracker.observe(path, st)

    def _hand_on(self) -> None:
        for path, st in self._tracker.ready():
            state = self._state_for(path)
            if state is None:
                continue
            try:
                self._on_ready(path, state.root, st)
            except Exception:
                log.exception("watcher: handing on %s failed; it is retried at the next rescan", path)
                continue
            self._tracker.mark_reported(path, st)

    def _state_for(self, path: Path) -> _RootState | None:
        """The innermost watched root holding `path`: a nested root's own settings win."""
        holders = [s for s in self._states if s.watch is not None and path.is_relative_to(s.root.path)]
        return max(holders, key=lambda s: len(s.root.path.parts), default=None)

    def _check_roots(self) -> list[_RootState]:
        """Schedules roots that appeared (or were replaced), unschedules vanished ones; returns the new."""
        appeared = []
        for state in self._states:
            identity = _folder_identity(state.root.path)
            if identity is None:
                if state.watch is not None:
                    self._unschedule(state)
                    log.warning("watcher: %s disappeared; watching for it to come back", state.root.path)
                elif not state.warned:
                    log.warning("watcher: %s is missing; watching for it to appear", state.root.path)
                state.identity, state.warned = None, True
                continue
            if state.watch is not None and identity == state.identity:
                continue
            if state.watch is not None:
                self._unschedule(state)  # the same name now holds another folder
            if self._schedule(state):
                state.identity, state.warned = identity, False
                kind = "polling" if state.polling else "inotify"
                log.info("watcher: watching %s (%s)", state.root.path, kind)
                appeared.append(state)
        return appeared

    def _schedule(self, state: _RootState) -> bool:
        handler = _Hints(self)
        path = os.fspath(state.root.path)
        try:
            state.watch = self._observer(state.polling).schedule(
                handler, path, recursive=state.root.recursive
            )
        except OSError as err:
            if err.errno != errno.ENOSPC or state.polling:
                if not state.warned:
                    log.warning("watcher: cannot watch %s: %s; trying again", path, err.strerror or err)
                state.warned = True
                return False
            _warn_watch_limit(state.root.path)
            state.polling = True
            return self._schedule(state)
        return True

    def _fall_back_to_polling(self, state: _RootState) -> None:
        _warn_watch_limit(state.root.path)
        self._unschedule(state)
        state.polling = True
        if not self._schedule(state):
            state.identity = None  # the next tick tries again

    def _unschedule(self, state: _RootState) -> None:
        observer = self._observers.get(state.polling)
        if observer is not None and state.watch is not None:
            try:
                observer.unschedule(state.watch)
            except (KeyError, OSError) as err:
                log.debug("watcher: unscheduling %s: %s", state.root.path, err)
        state.watch = None

    def _observer(self, polling: bool) -> BaseObserver:
        observer = self._observers.get(polling)
        if observer is None:
            observer = PollingObserver() if polling else InotifyObserver()
            observer.name = f"svdaemon-watcher-{'polling' if polling else 'inotify'}"
            observer.start()
            self._observers[polling] = observer
        return observer

    def _check_observers(self) -> None:
        """An observer or emitter thread that died is replaced, its roots rescheduled and rescanned."""
        for polling, observer in list(self._observers.items()):
            if observer.is_alive() and all(emitter.is_alive() for emitter in observer.emitters):
                continue
            log.warning(
                "watcher: the %s observer stopped; restarting it", "polling" if polling else "inotify"
            )
            del self._observers[polling]
            _stop_observer(observer)
            for state in self._states:
                if state.polling == polling:
                    state.watch, state.identity = None, None
            self.rescan()

    def _stop_observers(self) -> None:
        for observer in self._observers.values():
            _stop_observer(observer)
        self._observers.clear()
        for state in self._states:
            state.watch = None


def _warn_watch_limit(root: Path) -> None:
    log.warning(
        "watcher: inotify watch limit reached under %s; polling it instead "
        "(raise fs.inotify.max_user_watches to watch it with inotify)",
        root,
    )


def inotify_watch_limit_reached(folder: Path) -> bool:
    """Whether an inotify watch on `folder` fails with ENOSPC right now.

    watchdog 7 drops that error silently for a new subfolder, leaving it unwatched; this probe, on a
    throwaway inotify instance, is how the watcher notices.
    """
    fd = inotify_c.inotify_init()
    if fd == -1:
        return False  # out of inotify instances: not this limit, and the periodic rescan still runs
    try:
        watch = inotify_c.inotify_add_watch(fd, os.fsencode(folder), inotify_c.InotifyConstants.IN_CREATE)
        return watch == -1 and ctypes.get_errno() == errno.ENOSPC
    finally:
        os.close(fd)


def _folder_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the folder at `path`; None when there is no folder there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat_module.S_ISDIR(st.st_mode) else None


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    with contextlib.suppress(RuntimeError):  # never started
        observer.join()
