"""`svdaemon tray`: the tray icon, its own process and a client of `control`.

A GUI main loop here never touches the daemon's signals, and a crash here never takes the daemon down.
A background thread reads the status once a second (`StatusPoller`) and hands each reading to the icon,
which redraws only what changed; menu actions run on their own short threads, so neither ever blocks the
GUI loop. The picture is `tray_icon`, the words and the menu are `tray_menu`, notices are `notifications`.

pystray picks its backend when it is imported and fails without a display, so it is imported only after
`choose_backend` (a pure function of the desktop) has set `PYSTRAY_BACKEND`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TextIO

from svdaemon.config import Config
from svdaemon.control import Command, ControlError, DaemonNotRunning, StatusSnapshot, request
from svdaemon.errors import SvdaemonError
from svdaemon.notifications import DesktopNotifier, FailedFile, NoticeTracker
from svdaemon.owner import LockHeld, hold_lock
from svdaemon.status_text import APP, title
from svdaemon.tray_icon import IconLook, draw_icon, icon_look
from svdaemon.tray_menu import (
    Action,
    Fallback,
    Item,
    MenuEntry,
    OpenPath,
    Quit,
    RadioItem,
    SendCommand,
    Separator,
    ShowFailed,
    StatusLine,
    Submenu,
    build_menu,
    latin1_safe,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO_TRAY = 2
POLL_INTERVAL_S = 1.0
POLL_TIMEOUT_S = 0.9  # a reading never takes longer than the interval
COMMAND_TIMEOUT_S = 2.0
LOCK_NAME = "tray.lock"
FAILED_REPORT = "failed-files.txt"
# Desktops whose panels show only StatusNotifier (AppIndicator) icons, never XEmbed ones.
SNI_ONLY_DESKTOPS = frozenset({"gnome", "kde", "unity"})
SNI_WATCHER = "org.kde.StatusNotifierWatcher"
DBUS_PROBE_TIMEOUT_MS = 500


# ---- which pystray backend will show ---------------------------------------------------------------------


@dataclass(frozen=True)
class Desktop:
    """What the session offers a tray icon, as `probe_desktop` finds it."""

    platform: str
    desktops: tuple[str, ...]  # XDG_CURRENT_DESKTOP, lower-cased, e.g. ("ubuntu", "gnome")
    x11: bool  # DISPLAY is set
    wayland: bool  # a Wayland session: its panels show no XEmbed icons, even through XWayland
    session_bus: bool
    gtk: bool  # PyGObject with GTK 3
    appindicator: bool  # AyatanaAppIndicator3 or AppIndicator3 typelib
    sni_host: bool  # a StatusNotifierWatcher answers on the session bus
    requested: str | None = None  # PYSTRAY_BACKEND set by the user


@dataclass(frozen=True)
class BackendChoice:
    backend: str | None  # a pystray backend name; None: no tray can show here
    reason: str


def choose_backend(desktop: Desktop) -> BackendChoice:
    """The pystray backend whose icon this desktop will show, with the reason (or what to install).

    GNOME, KDE and Wayland sessions show only StatusNotifier icons: appindicator. Other X11 desktops with an
    XEmbed tray: gtk. xorg only as a last resort: it has no menu.
    """
    if desktop.requested:
        return BackendChoice(desktop.requested, f"PYSTRAY_BACKEND={desktop.requested} is set")
    if desktop.platform in ("darwin", "win32"):
        return BackendChoice(desktop.platform, "the system's own menu bar / notification area")
    if not (desktop.x11 or desktop.wayland):
        return BackendChoice(None, "no display: neither DISPLAY nor WAYLAND_DISPLAY is set")
    where = ":".join(desktop.desktops) or "this desktop"
    sni_only = desktop.wayland or bool(SNI_ONLY_DESKTOPS.intersection(desktop.desktops))
    missing = _indicator_needs(desktop)
    if not missing and (sni_only or desktop.sni_host):
        hint = (
            ""
            if desktop.sni_host
            else "; no StatusNotifier host answers yet (GNOME: enable the AppIndicator extension)"
        )
        return BackendChoice("appindicator", f"AppIndicator (StatusNotifier) icon on {where}{hint}")
    if sni_only:
        return BackendChoice(
            None, f"{where} shows only AppIndicator (StatusNotifier) icons; missing: {missing}"
        )
    if desktop.gtk and desktop.session_bus:
        return BackendChoice("gtk", f"GTK icon in the XEmbed system tray of {where}")
    return BackendChoice(
        "xorg", "plain X11 icon WITHOUT a menu; for the menu install PyGObject with GTK 3 in a D-Bus session"
    )


def _indicator_needs(desktop: Desktop) -> str:
    """What the appindicator backend lacks here, as install advice; empty when nothing."""
    needs = [
        ("PyGObject with GTK 3 (pip install 'svdaemon[desktop]')", desktop.gtk),
        ("gir1.2-ayatanaappindicator3-0.1", desktop.appindicator),
        ("a D-Bus session bus", desktop.session_bus),
    ]
    return ", ".join(name for name, present in needs if not present)


def probe_desktop(environ: Mapping[str, str]) -> Desktop:
    """Look at the environment and try the imports the gtk and appindicator backends need."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    session_bus = bool(environ.get("DBUS_SESSION_BUS_ADDRESS")) or bool(
        runtime and Path(runtime, "bus").exists()
    )
    gtk = _gi_imports(("Gtk", "3.0"))
    wayland = environ.get("XDG_SESSION_TYPE") == "wayland" or (
        bool(environ.get("WAYLAND_DISPLAY")) and not environ.get("DISPLAY")
    )
    return Desktop(
        platform=sys.platform,
        desktops=tuple(part.lower() for part in environ.get("XDG_CURRENT_DESKTOP", "").split(":") if part),
        x11=bool(environ.get("DISPLAY")),
        wayland=wayland,
        session_bus=session_bus,
        gtk=gtk,
        appindicator=_gi_imports(("AyatanaAppIndicator3", "0.1")) or _gi_imports(("AppIndicator3", "0.1")),
        sni_host=gtk and session_bus and _bus_name_has_owner(SNI_WATCHER),
        requested=environ.get("PYSTRAY_BACKEND") or None,
    )


def _gi_imports(namespace: tuple[str, str]) -> bool:
    try:
        import gi

        gi.require_version(*namespace)
        __import__(f"gi.repository.{namespace[0]}")
    except (ImportError, ValueError):
        return False
    return True


def _bus_name_has_owner(name: str) -> bool:
    from gi.repository import Gio, GLib

    try:
        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        reply = bus.call_sync(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            GLib.Variant("(s)", (name,)),
            GLib.VariantType("(b)"),
            Gio.DBusCallFlags.NONE,
            DBUS_PROBE_TIMEOUT_MS,
            None,
        )
    except GLib.Error:
        return False
    return bool(reply.unpack()[0])


def describe_backend(environ: Mapping[str, str] | None = None) -> str:
    """One line for `svdaemon doctor`: which tray backend would show, and why (or what is missing)."""
    choice = choose_backend(probe_desktop(os.environ if environ is None else environ))
    return f"tray: {choice.backend or 'none'} ({choice.reason})"


# ---- reading the daemon ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    snapshot: StatusSnapshot | None
    unreachable: str = "not running"  # what the tray says when there is no snapshot


def read_status(state_dir: Path) -> Reading:
    """One status request, bounded by POLL_TIMEOUT_S: a slow daemon reads as not responding."""
    try:
        reply = request(state_dir, Command("status"), timeout_s=POLL_TIMEOUT_S)
    except DaemonNotRunning:
        return Reading(None)
    except ControlError as error:
        log.debug("status not read: %s", error)
        return Reading(None, "not responding")
    return Reading(reply.snapshot)


class StatusPoller:
    """Reads the status once a second on its own thread and hands each reading on; `refresh` reads now."""

    def __init__(
        self,
        read: Callable[[], Reading],
        on_reading: Callable[[Reading], None],
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._read = read
        self._on_reading = on_reading
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="svdaemon-tray-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refresh(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            reading = self._read()
            try:
                self._on_reading(reading)
            except Exception:  # a bug in showing one reading must not stop the next
                log.exception("the tray could not show the status")
            self._wake.wait(max(0.0, self._interval_s - (time.monotonic() - started)))
            self._wake.clear()


# ---- the state DB: failed files -------------------------------------------------------------------------


def newest_failed(state_dir: Path, count: int) -> list[FailedFile]:
    """The `count` files that failed most recently, for a notification; none when the DB cannot be read."""
    from svdaemon.jobs import JobQueue

    try:
        with JobQueue.open(state_dir) as queue:
            failed = queue.recently_failed(count)
    except SvdaemonError as error:
        log.warning("cannot read the failed files from the state DB: %s", error)
        return []
    return [FailedFile(os.fsdecode(job.path), job.last_error) for job in failed]


def failed_report(files: list[FailedFile]) -> str:
    """The text `Show failed files` opens: each path and its error, and how to try again."""
    if not files:
        return "No file has failed.\n"
    lines = [f"{len(files)} file(s) failed. Try again with: svdaemon retry --all-failed (or PATH...)", ""]
    for file in files:
        lines += [file.path, f"    {file.error or 'no error recorded'}"]
    return "\n".join(lines) + "\n"


def write_failed_report(state_dir: Path) -> Path:
    path = state_dir / FAILED_REPORT
    files = newest_failed(state_dir, sys.maxsize)
    path.write_text(failed_report(files), encoding="utf-8", errors="backslashreplace")
    return path


# ---- actions --------------------------------------------------------------------------------------------


def open_command(platform: str, path: str) -> list[str]:
    """The desktop's opener for a folder or file (Windows uses os.startfile instead)."""
    return ["open", path] if platform == "darwin" else ["xdg-open", path]


def open_path(path: str) -> None:
    """Open in the user's file manager or editor, detached: the tray never waits for it."""
    if not os.path.exists(path):
        log.warning("cannot open %s: it does not exist", path)
        return
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # Windows only
        return
    command = open_command(sys.platform, path)
    try:
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError:
        log.error("cannot open %s: %s is not installed (Debian: xdg-utils)", path, command[0])


class Actions:
    """Performs what a menu item asks; `in_background` is what the menu calls, so the GUI never waits."""

    def __init__(
        self,
        state_dir: Path,
        stop_tray: Callable[[], None],
        refresh: Callable[[], None],
        opener: Callable[[str], None] = open_path,
    ) -> None:
        self._state_dir = state_dir
        self._stop_tray = stop_tray
        self._refresh = refresh
        self._opener = opener

    def in_background(self, action: Action) -> None:
        threading.Thread(
            target=self.perform, args=(action,), name="svdaemon-tray-action", daemon=True
        ).start()

    def perform(self, action: Action) -> None:
        try:
            self._perform(action)
        except (SvdaemonError, OSError) as error:
            log.error("tray action %s failed: %s", action, error)
        self._refresh()

    def _perform(self, action: Action) -> None:
        match action:
            case SendCommand(command):
                self._send(command)
            case OpenPath(path):
                self._opener(path)
            case ShowFailed():
                self._opener(os.fsdecode(write_failed_report(self._state_dir)))
            case Quit():
                with contextlib.suppress(DaemonNotRunning):
                    self._send(Command("quit"))
                self._stop_tray()

    def _send(self, command: Command) -> None:
        reply = request(self._state_dir, command, timeout_s=COMMAND_TIMEOUT_S)
        if reply.ok:
            log.info("%s: %s", command.name, reply.message)
        else:
            log.warning("the daemon refused %s: %s", command.name, reply.message)


# ---- the icon -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrayView:
    """Everything shown; the icon changes only the parts that differ from the last view."""

    look: IconLook
    title: str
    menu: tuple[MenuEntry, ...]


def view_of(reading: Reading, fallback: Fallback, latin1: bool = False) -> TrayView:
    text = title(reading.snapshot, reading.unreachable)
    return TrayView(
        icon_look(reading.snapshot),
        latin1_safe(text) if latin1 else text,
        build_menu(reading.snapshot, fallback, reading.unreachable),
    )


def fallback_of(config: Config) -> Fallback:
    watch = tuple(os.fsdecode(root.path) for root in config.watch)
    return Fallback(watch, os.fsdecode(config.log_file))


def pystray_menu(pystray: ModuleType, entries: tuple[MenuEntry, ...], run: Callable[[Action], None]):
    """The pystray.Menu for `entries`; activating an item calls `run(action)`."""
    return pystray.Menu(*(_pystray_item(pystray, entry, run) for entry in entries))


def _pystray_item(pystray: ModuleType, entry: MenuEntry, run: Callable[[Action], None]):
    match entry:
        case Separator():
            return pystray.Menu.SEPARATOR
        case StatusLine(text):
            return pystray.MenuItem(text, None, enabled=False)
        case Item(text, action, enabled):
            return pystray.MenuItem(text, _activate(run, action), enabled=enabled)
        case RadioItem(text, action, checked):
            return pystray.MenuItem(text, _activate(run, action), checked=lambda _item: checked, radio=True)
        case Submenu(text, entries):
            return pystray.MenuItem(text, pystray_menu(pystray, entries, run))
    raise TypeError(f"not a menu entry: {entry!r}")


def _activate(run: Callable[[Action], None], action: Action) -> Callable[[object, object], None]:
    def activate(_icon: object, _item: object) -> None:  # pystray passes (icon, item)
        run(action)

    return activate


class TrayApp:
    """The pystray icon fed by the poller; `run` blocks in the GUI loop until Quit or SIGTERM."""

    def __init__(self, config: Config, pystray: ModuleType, backend: str) -> None:
        state_dir = config.state_dir
        self._pystray = pystray
        self._has_menu = pystray.Icon.HAS_MENU  # false on the xorg backend
        self._fallback = fallback_of(config)
        self._latin1 = backend == "xorg"  # pystray's xorg backend raises on other characters
        self._tracker = NoticeTracker(partial(newest_failed, state_dir)) if config.notify else None
        self._notifier = DesktopNotifier()
        self._stopping = threading.Event()
        self._poller = StatusPoller(partial(read_status, state_dir), self._on_reading)
        self.actions = Actions(state_dir, self.stop, self._poller.refresh)
        first = view_of(read_status(state_dir), self._fallback, self._latin1)
        self._view = first
        self.icon = pystray.Icon(APP, draw_icon(first.look), first.title, self._menu(first))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        try:
            self.icon.run(self._setup)
        except Exception:
            # pystray's gtk and appindicator backends raise from stop() when no notification service exists.
            if not self._stopping.is_set():
                raise
            log.debug("the tray backend raised while stopping", exc_info=True)
        finally:
            self._poller.stop()
        return EXIT_OK

    def stop(self) -> None:
        self._stopping.set()
        self.icon.stop()

    def _setup(self, icon) -> None:
        icon.visible = True
        self._set_tooltip(self._view.title)
        self._poller.start()

    def _on_reading(self, reading: Reading) -> None:
        self.show(view_of(reading, self._fallback, self._latin1))
        if self._tracker is not None:
            for notice in self._tracker.update(reading.snapshot):
                self._notifier.send(notice)

    def show(self, view: TrayView) -> None:
        previous, self._view = self._view, view
        if view.look != previous.look:
            self.icon.icon = draw_icon(view.look)
        if view.title != previous.title:
            self.icon.title = view.title
            self._set_tooltip(view.title)
        if view.menu != previous.menu and self._has_menu:
            self.icon.menu = self._menu(view)

    def _menu(self, view: TrayView):
        return pystray_menu(self._pystray, view.menu, self.actions.in_background) if self._has_menu else None

    def _set_tooltip(self, text: str) -> None:
        """pystray's gtk backend sets only the status icon's title, which XEmbed trays do not show on hover."""
        status_icon = getattr(self.icon, "_status_icon", None)
        if status_icon is not None:
            from gi.repository import GLib

            GLib.idle_add(status_icon.set_tooltip_text, text)


# ---- entry ----------------------------------------------------------------------------------------------


class TrayAlreadyRunning(SvdaemonError):
    pass


def hold_tray_lock(state_dir: Path) -> int:
    """One tray per state_dir: the daemon's and the login item's never both show."""
    try:
        return hold_lock(state_dir / LOCK_NAME)
    except LockHeld as held:
        raise TrayAlreadyRunning(
            f"another svdaemon tray (pid {held.holder}) is running for {state_dir}"
        ) from None


def main(config: Config, out: TextIO) -> int:
    """`svdaemon tray`: 0 after Quit, SIGTERM or when another tray already shows; 2 when no tray can show."""
    choice = choose_backend(probe_desktop(os.environ))
    if choice.backend is None:
        print(f"svdaemon tray: {choice.reason}", file=out)
        return EXIT_NO_TRAY
    try:
        lock = hold_tray_lock(config.state_dir)
    except TrayAlreadyRunning as error:
        print(f"svdaemon tray: {error}", file=out)
        return EXIT_OK
    try:
        os.environ["PYSTRAY_BACKEND"] = choice.backend
        try:
            import pystray
        except Exception as error:  # ImportError, or Xlib's display errors from the xorg backend
            print(f"svdaemon tray: the {choice.backend} tray cannot start: {error}", file=out)
            return EXIT_NO_TRAY
        log.info("tray: %s (%s)", choice.backend, choice.reason)
        return TrayApp(config, pystray, choice.backend).run()
    finally:
        os.close(lock)
