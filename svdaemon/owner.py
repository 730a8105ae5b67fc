"""Which process did something, and whether it still lives: for job claims, temp files and lock files.

A crash (kill -9, power loss) leaves claims in the queue and half-written temp files beside sidecars.
Both carry their writer's identity, so the next daemon can tell a dead writer's leftovers, which it takes
back at once, from a live writer's work in progress, which it leaves alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
from pathlib import Path

_UNKNOWN_START = "?"
# pid, start token, host digest: the file-name form of an owner (a host name may hold any character).
_TAG = re.compile(r"(\d+)\.(\d+|x)\.([0-9a-f]{8})")


def _start_token(pid: int) -> str:
    """When the process started (Linux: clock ticks since boot), so a reused pid is not taken for its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return _UNKNOWN_START
    return stat.rsplit(")", 1)[1].split()[19]


def _host_digest(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def current_owner() -> str:
    """`host:pid:start-token` of this process, the owner recorded on the jobs it claims."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_token(pid)}"


def owner_is_alive(owner: str) -> bool:
    """Whether the process that claimed a job may still be working on it.

    Another host's process cannot be checked from here, so it counts as alive and its jobs are never taken.
    A string that is not an owner we write cannot belong to a live claimant and counts as dead.
    """
    try:
        host, pid_text, token = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    current = _start_token(pid)
    return _UNKNOWN_START in (token, current) or current == token


def file_tag() -> str:
    """This process's identity in a form safe inside a file name: `pid.start.hostdigest`."""
    pid = os.getpid()
    start = _start_token(pid).replace(_UNKNOWN_START, "x")
    return f"{pid}.{start}.{_host_digest(socket.gethostname())}"


def tagged_writer_is_dead(name: str) -> bool:
    """Whether a file name holding a `file_tag` names a writer that has surely exited on this host.

    False when no tag is found or the writer is on another host: such files are left to the age rule.
    """
    match = _TAG.search(name)
    if match is None:
        return False
    pid, start, digest = match.groups()
    if digest != _host_digest(socket.gethostname()):
        return False
    token = _UNKNOWN_START if start == "x" else start
    return not owner_is_alive(f"{socket.gethostname()}:{pid}:{token}")


class LockHeld(Exception):
    """Another live process holds the lock; `holder` is the pid it wrote there ("unknown" if none)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def hold_lock(path: Path) -> int:
    """Take the lock file `path` (an flock, freed by the kernel when the process ends, however it ends) and
    write this process's pid in it; the descriptor must stay open for as long as the lock is wanted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockHeld(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
