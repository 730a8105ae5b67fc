"""Desktop notifications for the tray: a file failed, the queue drained.

`NoticeTracker` turns consecutive status readings into notices (pure: the failed files' names come from a
callable that reads the state DB); `DesktopNotifier` sends them as freedesktop notifications
(`org.freedesktop.Notifications.Notify` on the session bus, through Gio). Without a notification service,
or without PyGObject, it logs once and goes on: a notice is a courtesy, never a reason to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from svdaemon.control import StatusSnapshot
from svdaemon.status_text import to_do_count

log = logging.getLogger(__name__)

APP = "svdaemon"
BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
NOTIFY_TIMEOUT_MS = 1000  # the status poller waits on this; a service that takes longer is not waited for
NAMED_FAILURES = 3  # a burst of failures names this many files, then counts the rest


@dataclass(frozen=True)
class Notice:
    summary: str
    body: str
    icon: str  # a freedesktop icon name


@dataclass(frozen=True)
class FailedFile:
    path: str
    error: str | None


NewestFailed = Callable[[int], list[FailedFile]]


class NoticeTracker:
    """Remembers the previous reading and where the current burst of work began.

    A drain is reported when nothing is queued or running any more and files were transcribed since the last
    quiet reading, so a file queued and done between two readings still counts. The first reading, and the
    first after the daemon was away, only set the baseline.
    """

    def __init__(self, newest_failed: NewestFailed) -> None:
        self._newest_failed = newest_failed
        self._previous: StatusSnapshot | None = None
        self._quiet: StatusSnapshot | None = None  # the first reading, then the last with nothing pending

    def update(self, snapshot: StatusSnapshot | None) -> list[Notice]:
        previous, self._previous = self._previous, snapshot
        if snapshot is None or previous is None:
            self._quiet = snapshot
            return []
        found = []
        failed = _count(snapshot, "failed") - _count(previous, "failed")
        if failed > 0:
            found.append(failure_notice(failed, self._newest_failed(failed)))
        if to_do_count(snapshot.queue) == 0:
            quiet, self._quiet = self._quiet, snapshot
            done = _count(snapshot, "done") - _count(quiet, "done") if quiet else 0
            if done > 0:
                found.append(drained_notice(done, _count(snapshot, "failed")))
        return found


def failure_notice(count: int, files: list[FailedFile]) -> Notice:
    """Names the file (or the first few) and its error; the tray menu's Show failed files has them all."""
    if not files:
        return Notice(
            f"{APP}: {count} file(s) failed", "See Show failed files in the tray menu.", "dialog-error"
        )
    summary = (
        f"{APP}: {PurePath(files[0].path).name} failed" if count == 1 else f"{APP}: {count} files failed"
    )
    lines = [_failure_line(file) for file in files[:NAMED_FAILURES]]
    if count > NAMED_FAILURES:
        lines.append(f"… and {count - NAMED_FAILURES} more")
    return Notice(summary, "\n".join(lines), "dialog-error")


def drained_notice(done: int, failed_total: int) -> Notice:
    body = f"{done} file(s) transcribed; nothing left in the queue."
    if failed_total:
        body += f" {failed_total} failed file(s) wait in Show failed files."
    return Notice(f"{APP}: all files done", body, "dialog-information")


def _failure_line(file: FailedFile) -> str:
    name = PurePath(file.path).name
    return f"{name}: {file.error}" if file.error else name


def _count(snapshot: StatusSnapshot, state: str) -> int:
    return snapshot.queue.get(state, 0)


class DesktopNotifier:
    """Sends notices to the desktop's notification service; logs the first failure to reach one."""

    def __init__(self) -> None:
        self._warned = False

    def send(self, notice: Notice) -> bool:
        """True when the service took it."""
        try:
            import gi

            gi.require_version("Gio", "2.0")
            from gi.repository import Gio, GLib
        except (ImportError, ValueError) as error:
            self._unavailable(f"PyGObject is missing ({error})")
            return False
        parameters = GLib.Variant(
            "(susssasa{sv}i)", (APP, 0, notice.icon, notice.summary, notice.body, [], {}, -1)
        )
        try:
            bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
            bus.call_sync(
                BUS_NAME,
                OBJECT_PATH,
                BUS_NAME,
                "Notify",
                parameters,
                GLib.VariantType("(u)"),
                Gio.DBusCallFlags.NONE,
                NOTIFY_TIMEOUT_MS,
                None,
            )
        except GLib.Error as error:
            self._unavailable(error.message)
            return False
        return True

    def _unavailable(self, cause: str) -> None:
        if self._warned:
            log.debug("desktop notification not shown: %s", cause)
            return
        self._warned = True
        log.warning("desktop notifications are not shown (no notification service: %s); going on", cause)
