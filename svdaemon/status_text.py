"""The words for the queue and the device that `svdaemon status`, the tray and systemd's status line share.

One place, so that the tray's "3 to do" and the CLI's "3 to do (0 queued, 3 running)" can never disagree:
the worker claims several files ahead, so most of what waits is `running` in the queue, not `queued`.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def device_text(device: str, precision: str) -> str:
    """`cuda:0 (fp16)`; `auto` alone while the model loads, since the device (and so the precision) that
    `auto` picks is not known yet."""
    return device if device == "auto" else f"{device} ({precision})"
