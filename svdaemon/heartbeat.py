"""Whether the worker thread is stuck, from the rhythm of its own beats.

The worker beats at every step: each turn of its loop (about a second when idle), each wait while paused
or stepping aside, and after every engine batch. A step that lasts far longer than the longest of its
recent steps, and longer than a floor, is a hang (a driver that never returns, a deadlock), not work: an
idle or paused worker beats every second, and a long batch is long compared with a floor that a batch on
the slowest CPU does not reach. systemd's watchdog is fed only while this says the worker is well.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

STUCK_FLOOR_S = 300.0  # no step is a hang before this
STUCK_FACTOR = 10.0  # ... nor before this many times the longest recent step
RECENT_STEPS = 64


class Heartbeat:
    """Beats from the worker thread; `stuck` asked from another thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._steps: deque[float] = deque(maxlen=RECENT_STEPS)

    def beat(self) -> None:
        now = self._clock()
        with self._lock:
            self._steps.append(now - self._last)
            self._last = now

    def limit_s(self) -> float:
        """How long the current step may last before it counts as a hang."""
        with self._lock:
            longest = max(self._steps, default=0.0)
        return max(STUCK_FLOOR_S, STUCK_FACTOR * longest)

    def stuck(self) -> str | None:
        """Why the worker looks stuck, or None while it is well."""
        limit = self.limit_s()
        with self._lock:
            silent_s = self._clock() - self._last
        if silent_s <= limit:
            return None
        return f"the worker has not moved for {silent_s:.0f} s (limit {limit:.0f} s)"
