"""A helper process the daemon keeps running beside it: the tray icon.

The tray runs a GUI main loop in its own process, so its crash never takes the daemon down. A crash is
met with a restart, after a growing pause, a few times; then the daemon goes on headless and says so.
A clean exit (the user quit the icon, or another tray already shows this daemon) and exit 2 (no display
or no tray support here) are answers, not crashes: the daemon goes on without it.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

EXIT_CANNOT_RUN = 2  # the contract's "no display / no tray support"
MAX_RESTARTS = 3
FIRST_PAUSE_S = 1.0  # before the first restart; doubled each time
STABLE_S = 60.0  # a run this long was not part of a crash loop: the restarts count from zero again
STOP_TIMEOUT_S = 5.0


class Supervised:
    """Start with `start`, call `poll` from the daemon's loop, end with `stop`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        max_restarts: int = MAX_RESTARTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.max_restarts = max_restarts
        self.restarts = 0
        self.given_up: str | None = None  # why it no longer runs, once it never will again
        self._clock = clock
        self._process: subprocess.Popen | None = None
        self._started_at = 0.0
        self._restart_at: float | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        try:
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
            self._started_at = self._clock()
        except OSError as error:
            self._give_up(f"cannot start ({error.strerror or error})")
            return
        log.info("%s started (pid %d)", self.name, self._process.pid)

    def poll(self) -> None:
        """Notice an exit and restart after a crash, when its pause is over."""
        if self.given_up is not None:
            return
        if self._restart_at is not None:
            if self._clock() >= self._restart_at:
                self._restart_at = None
                self.restarts += 1
                self.start()
            return
        if self._process is None or self._process.poll() is None:
            return
        code = self._process.returncode
        self._process = None
        if self._clock() - self._started_at >= STABLE_S:
            self.restarts = 0
        if code == 0:
            self._give_up("it ended", level=logging.INFO)
        elif code == EXIT_CANNOT_RUN:
            self._give_up("it cannot run here (no display or no tray support)")
        elif self.restarts >= self.max_restarts:
            self._give_up(f"it crashed {self.restarts + 1} times ({_how(code)})")
        else:
            pause_s = FIRST_PAUSE_S * 2**self.restarts
            log.warning("%s crashed (%s); starting it again in %.0f s", self.name, _how(code), pause_s)
            self._restart_at = self._clock() + pause_s

    def stop(self) -> None:
        """End it (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and never restart it."""
        self.given_up = self.given_up or "the daemon stopped"
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def _give_up(self, why: str, level: int = logging.WARNING) -> None:
        self.given_up = why
        log.log(level, "%s: %s; svdaemon goes on without it", self.name, why)


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"
