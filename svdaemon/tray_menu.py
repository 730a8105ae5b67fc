"""The tray's menu, as a pure function of the daemon's status.

The menu is a tuple of plain values (status lines, items with an `Action`, radio items, submenus,
separators) so that tests read it item by item; `tray.py` turns it into a pystray menu and performs the
actions. The tooltip (`status_text.title`) and the words the menu shares with `svdaemon status` are in
`status_text`. Without a snapshot (no daemon answers) the menu still opens the watched folders and the log,
from the tray's own config (`Fallback`).
"""

from __future__ import annotations

from dataclasses import dataclass

from svdaemon.control import Command, DeviceChoice, StatusSnapshot
from svdaemon.status_text import (
    APP,
    DASH,
    TrayState,
    current_file_text,
    cut_reason,
    gigabytes,
    to_do_count,
    to_do_text,
    tray_state,
    vram_text,
)

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


# ---- the xorg backend's text --------------------------------------------------------------------------


def latin1_safe(text: str) -> str:
    """For pystray's xorg backend, which cannot show other characters (it raises on `—` or `会议.mp4`)."""
    return text.replace("—", "-").encode("latin-1", "replace").decode("latin-1")


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
        lines.append(StatusLine(f"Paused: {cut_reason(snapshot.pause_reason or '')}"))
    if snapshot.last_error:
        lines.append(StatusLine(f"Last error: {cut_reason(snapshot.last_error)}"))
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
        text += f" ({gigabytes(choice.free_mb)} GB free)"
    return RadioItem(text, SendCommand(Command("device", choice.name)), checked=choice.name == current)


def _open_folders(watch: tuple[str, ...]) -> tuple[MenuEntry, ...]:
    if not watch:
        return ()
    if len(watch) == 1:
        return (Item("Open watched folder", OpenPath(watch[0])),)
    return (Submenu("Open watched folder", tuple(Item(folder, OpenPath(folder)) for folder in watch)),)
