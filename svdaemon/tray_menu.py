"""The tray's words: its title (tooltip) and its menu, as pure functions of the daemon's status.

The menu is a tuple of plain values (status lines, items with an `Action`, radio items, submenus,
separators) so that tests read it item by item; `tray.py` turns it into a pystray menu and performs the
actions. Without a snapshot (no daemon answers) the menu still opens the watched folders and the log,
from the tray's own config (`Fallback`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath

from svdaemon.control import Command, DaemonState, DeviceChoice, StatusSnapshot
from svdaemon.status_text import to_do_count, to_do_text
from svdaemon.tray_icon import TrayState, tray_state

APP = "svdaemon"
DASH = " — "
DOT = " · "
REASON_CHARS = 80  # a pause reason or error in a status line is cut here; the log has it whole
MB_PER_GB = 1024
_PASSING_STATES = {DaemonState.LOADING: "loading the model", DaemonState.STOPPING: "stopping"}


# ---- actions: what a menu item asks `tray.Actions` to do ----------------------------------------------


@dataclass(frozen=True)
class SendCommand:
    command: Command


@dataclass(frozen=True)
class OpenPath:
    path: str


@dataclass(frozen=True)
class ShowFailed:
    """Write the failed files (from the state DB) to a text file and open it."""


@dataclass(frozen=True)
class Quit:
    """Stop the daemon (when one runs), then the tray."""


Action = SendCommand | OpenPath | ShowFailed | Quit


# ---- menu entries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusLine:
    """Shown, never clickable."""

    text: str


@dataclass(frozen=True)
class Item:
    text: str
    action: Action
    enabled: bool = True


@dataclass(frozen=True)
class RadioItem:
    text: str
    action: Action
    checked: bool


@dataclass(frozen=True)
class Submenu:
    text: str
    entries: tuple[MenuEntry, ...]


@dataclass(frozen=True)
class Separator:
    pass


MenuEntry = StatusLine | Item | RadioItem | Submenu | Separator
SEPARATOR = Separator()


@dataclass(frozen=True)
class Fallback:
    """What the tray knows from its own config when no daemon tells it."""

    watch: tuple[str, ...]
    log_file: str


# ---- title ---------------------------------------------------------------------------------------------


def title(snapshot: StatusSnapshot | None, unreachable: str = "not running") -> str:
    """`svdaemon — 3 to do · lecture.mp4 41 % · cuda:0 1.8 / 24.0 GB`.

    Working shows no state word; idle says `idle`, paused and error states say why. `unreachable` is what to
    say when no snapshot came (`not running`, or `not responding` for a daemon too slow to answer).
    """
    if snapshot is None:
        return f"{APP}{DASH}{unreachable}"
    parts = [word] if (word := _state_word(snapshot)) else []
    if to_do_count(snapshot.queue):
        parts.append(to_do_text(snapshot.queue))
    if snapshot.current_file:
        parts.append(current_file_text(snapshot))
    failed = snapshot.queue.get("failed", 0)
    if failed:
        parts.append(f"{failed} failed")
    parts.append(device_text(snapshot))
    return APP + DASH + DOT.join(parts)


def latin1_safe(text: str) -> str:
    """For pystray's xorg backend, which cannot show other characters (it raises on `—` or `会议.mp4`)."""
    return text.replace("—", "-").encode("latin-1", "replace").decode("latin-1")


def _state_word(snapshot: StatusSnapshot) -> str | None:
    state = tray_state(snapshot)
    if state is TrayState.ERROR:
        return f"{state.value}: {_cut(snapshot.pause_reason or '')}"
    if snapshot.state in _PASSING_STATES:
        return _PASSING_STATES[snapshot.state]
    if state in (TrayState.WORKING, TrayState.ON_CPU):
        return None
    return state.value


def current_file_text(snapshot: StatusSnapshot) -> str:
    """`lecture.mp4 41 %`: the name only; the percentage floors, so 100 % means done."""
    name = PurePath(snapshot.current_file or "").name
    if snapshot.progress is None:
        return name
    return f"{name} {math.floor(round(snapshot.progress * 100, 6))} %"  # round first: 0.29 * 100 < 29


def device_text(snapshot: StatusSnapshot) -> str:
    """`cuda:0 1.8 / 24.0 GB`, or just the device's name where no VRAM is read (the CPU)."""
    vram = vram_text(snapshot)
    return f"{snapshot.device} {vram}" if vram else snapshot.device


def vram_text(snapshot: StatusSnapshot) -> str | None:
    """`1.8 / 24.0 GB`: svdaemon's own VRAM use of the card's total."""
    used, total = snapshot.vram_used_mb, snapshot.vram_total_mb
    if used is None or not total:
        return None
    return f"{_gb(used)} / {_gb(total)} GB"


def _gb(megabytes: int) -> str:
    return f"{megabytes / MB_PER_GB:.1f}"


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


# ---- menu ----------------------------------------------------------------------------------------------


def build_menu(
    snapshot: StatusSnapshot | None, fallback: Fallback, unreachable: str = "not running"
) -> tuple[MenuEntry, ...]:
    """The whole menu for this status, top to bottom."""
    watch = snapshot.watch if snapshot is not None and snapshot.watch else fallback.watch
    log_file = snapshot.log_file if snapshot is not None and snapshot.log_file else fallback.log_file
    files = (*_open_folders(watch), Item("Open log", OpenPath(log_file)))
    if snapshot is None:
        return (
            StatusLine(f"{APP} is {unreachable}"),
            SEPARATOR,
            *files,
            Item("Show failed files", ShowFailed()),
            SEPARATOR,
            Item("Quit tray", Quit()),
        )
    failed = snapshot.queue.get("failed", 0)
    return (
        *status_lines(snapshot),
        SEPARATOR,
        pause_item(snapshot),
        Submenu("Device", tuple(device_item(choice, snapshot.device) for choice in snapshot.devices)),
        SEPARATOR,
        *files,
        Item(f"Show failed files ({failed})", ShowFailed(), enabled=failed > 0),
        SEPARATOR,
        Item(f"Quit {APP}", Quit()),
    )


def status_lines(snapshot: StatusSnapshot) -> tuple[StatusLine, ...]:
    failed = snapshot.queue.get("failed", 0)
    queue = to_do_text(snapshot.queue) if to_do_count(snapshot.queue) else "empty"
    lines = [StatusLine(f"Queue: {queue}" + (f", {failed} failed" if failed else ""))]
    lines.append(
        StatusLine(f"File: {current_file_text(snapshot)}" if snapshot.current_file else "File: none")
    )
    vram = vram_text(snapshot)
    lines.append(StatusLine(f"Device: {snapshot.device}" + (f", VRAM {vram}" if vram else "")))
    state = tray_state(snapshot)
    if state in (TrayState.YIELDING_VRAM, TrayState.ERROR):
        lines.append(StatusLine(f"Paused: {_cut(snapshot.pause_reason or '')}"))
    if snapshot.last_error:
        lines.append(StatusLine(f"Last error: {_cut(snapshot.last_error)}"))
    return tuple(lines)


def pause_item(snapshot: StatusSnapshot) -> Item:
    """Resume when the user paused; Pause otherwise (also while the daemon stands aside on its own)."""
    if tray_state(snapshot) is TrayState.PAUSED_BY_USER:
        return Item("Resume", SendCommand(Command("resume")))
    return Item("Pause", SendCommand(Command("pause")))


def device_item(choice: DeviceChoice, current: str) -> RadioItem:
    """`cuda:1 — NVIDIA GeForce RTX 3090 (22.5 GB free)`; the CPU is just `CPU`."""
    text = choice.label if choice.label.lower() == choice.name else f"{choice.name}{DASH}{choice.label}"
    if choice.free_mb is not None:
        text += f" ({_gb(choice.free_mb)} GB free)"
    return RadioItem(text, SendCommand(Command("device", choice.name)), checked=choice.name == current)


def _open_folders(watch: tuple[str, ...]) -> tuple[MenuEntry, ...]:
    if not watch:
        return ()
    if len(watch) == 1:
        return (Item("Open watched folder", OpenPath(watch[0])),)
    return (Submenu("Open watched folder", tuple(Item(folder, OpenPath(folder)) for folder in watch)),)
