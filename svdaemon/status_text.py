"""The words about a status snapshot that `svdaemon status`, the tray and systemd's status line share.

One place, so that the tray's "3 to do" and the CLI's "3 to do (0 queued, 3 running)" can never disagree
(the worker claims several files ahead, so most of what waits is `running` in the queue, not `queued`), and
so that the daemon can say its one-line title to systemd without importing the tray's drawing (Pillow).
`tray_state` is the one classification the icon's glyph and the title both follow.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from pathlib import PurePath

from svdaemon.control import DaemonState, StatusSnapshot

APP = "svdaemon"
DASH = " — "
DOT = " · "
REASON_CHARS = 80  # a pause reason or error in a status line is cut here; the log has it whole
MB_PER_GB = 1024
_PASSING_STATES = {DaemonState.LOADING: "loading the model", DaemonState.STOPPING: "stopping"}

# The queue's states in the order people read them: what is left, then what ended.
_TO_DO_STATES = ("queued", "running")
_ENDED_STATES = ("done", "failed", "skipped")


def to_do_count(queue: Mapping[str, int]) -> int:
    """Files not finished yet: queued, and claimed by the worker (being prepared or transcribed)."""
    return sum(queue.get(state, 0) for state in _TO_DO_STATES)


def to_do_text(queue: Mapping[str, int]) -> str:
    """`3 to do`, or `nothing to do`."""
    count = to_do_count(queue)
    return f"{count} to do" if count else "nothing to do"


def queue_text(queue: Mapping[str, int]) -> str:
    """`3 to do (0 queued, 3 running), 5 done, 1 failed, 0 skipped`."""
    detail = ", ".join(f"{queue.get(state, 0)} {state}" for state in _TO_DO_STATES)
    ended = ", ".join(f"{queue.get(state, 0)} {state}" for state in _ENDED_STATES)
    return f"{to_do_text(queue)} ({detail}), {ended}"


def device_precision_text(device: str, precision: str) -> str:
    """`cuda:0 (fp16)`; `auto` alone while the model loads, since the device (and so the precision) that
    `auto` picks is not known yet."""
    return device if device == "auto" else f"{device} ({precision})"


class TrayState(enum.Enum):
    NOT_RUNNING = "not running"
    IDLE = "idle"
    WORKING = "working"
    ON_CPU = "working on the CPU"
    PAUSED_BY_USER = "paused"
    YIELDING_VRAM = "waiting for GPU memory"
    ERROR = "cannot go on"


def tray_state(snapshot: StatusSnapshot | None) -> TrayState:
    """The one state the icon and the title show; standing aside for any reason but the user's or VRAM's
    (no usable device) is an error the user must act on."""
    if snapshot is None:
        return TrayState.NOT_RUNNING
    if snapshot.paused and snapshot.pause_kind == "user":
        return TrayState.PAUSED_BY_USER
    if snapshot.paused and snapshot.pause_kind == "vram":
        return TrayState.YIELDING_VRAM
    if snapshot.paused:
        return TrayState.ERROR
    if snapshot.state is DaemonState.IDLE:
        return TrayState.IDLE
    return TrayState.ON_CPU if snapshot.device == "cpu" else TrayState.WORKING


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


def _state_word(snapshot: StatusSnapshot) -> str | None:
    state = tray_state(snapshot)
    if state is TrayState.ERROR:
        return f"{state.value}: {cut_reason(snapshot.pause_reason or '')}"
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
    return f"{gigabytes(used)} / {gigabytes(total)} GB"


def gigabytes(megabytes: int) -> str:
    return f"{megabytes / MB_PER_GB:.1f}"


def cut_reason(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"
