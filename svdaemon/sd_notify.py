"""systemd's notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

The unit is `Type=notify` with a watchdog: systemd waits for READY=1 before it counts the service as
started, shows the last STATUS= line in `systemctl status`, extends its start timeout on
EXTEND_TIMEOUT_USEC=, and restarts the service when WATCHDOG=1 stops coming for `WatchdogSec`. Outside
systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon speaks it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to the socket systemd gave this process; a no-op without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        # A leading "@" names a Linux abstract socket, which the kernel spells with a NUL byte.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """From NOTIFY_SOCKET and WATCHDOG_USEC (honoured only when WATCHDOG_PID, if set, is this process)."""
        watchdog = environ.get("WATCHDOG_USEC")
        watched_pid = environ.get("WATCHDOG_PID")
        if watched_pid and watched_pid != str(os.getpid()):
            watchdog = None
        return cls(environ.get("NOTIFY_SOCKET") or None, int(watchdog) if watchdog else None)

    @property
    def active(self) -> bool:
        return self._address is not None

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def extend_timeout(self, seconds: float, status: str) -> None:
        """Give a slow start-up step `seconds` more before systemd's start timeout counts it as failed."""
        self.send(EXTEND_TIMEOUT_USEC=str(round(seconds * 1e6)), STATUS=status)

    def alive(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping")

    def send(self, **fields: str) -> None:
        """One datagram of `KEY=value` lines, never waiting: when the reader's queue is full (a stalled or
        gone systemd) the message is dropped, since a daemon blocked on its supervisor can neither work nor
        stop. A failure is logged once: systemd may be gone, not the daemon."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as error:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), error)
                self._failed = True
