"""The control channel between the running daemon and short-lived clients (the CLI, the tray).

One Unix socket, `state_dir/control.sock` (mode 0600, no network port), carries one JSON line in and one
JSON line out per connection. The daemon answers `status` with a `StatusSnapshot` and passes `pause`,
`resume`, `device NAME` and `quit` to its own handler; this module holds no business logic. It imports only
the standard library so that `svdaemon status` answers within a second without loading torch or FunASR.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import secrets
import selectors
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from svdaemon.errors import StartupError, SvdaemonError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
# sun_path is 108 bytes on Linux (104 on the BSDs and macOS), one of them the terminating NUL.
SUN_PATH_MAX = 107
MAX_REQUEST_BYTES = 4096
MAX_REPLY_BYTES = 1 << 20
# How long the server waits for a client's request line and for its reply to be taken.
SERVER_IO_TIMEOUT_S = 1.0
_TMP = Path("/tmp")


class DaemonNotRunning(SvdaemonError):
    """Nothing listens on the control socket: the CLI says so and exits 3."""


class ControlError(SvdaemonError):
    """The control channel misbehaved: no answer in time, a malformed reply, or a command we do not know."""


class DaemonState(str, enum.Enum):
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    LOADING = "loading"
    STOPPING = "stopping"


COMMANDS = frozenset({"status", "pause", "resume", "device", "quit"})


@dataclass(frozen=True)
class Command:
    """A request to the daemon; only `device` takes an argument (the device name, e.g. `cuda:1`)."""

    name: str
    argument: str | None = None

    def __post_init__(self) -> None:
        if self.name not in COMMANDS:
            raise ControlError(
                f"unknown command {self.name!r}; expected one of {', '.join(sorted(COMMANDS))}"
            )
        if self.name == "device" and not self.argument:
            raise ControlError("command 'device' needs a device name, e.g. 'cpu' or 'cuda:0'")
        if self.name != "device" and self.argument is not None:
            raise ControlError(f"command {self.name!r} takes no argument, got {self.argument!r}")

    def to_json(self) -> dict[str, object]:
        return {"command": self.name, "argument": self.argument}

    @classmethod
    def from_json(cls, data: object) -> Command:
        if not isinstance(data, Mapping) or not isinstance(data.get("command"), str):
            raise ControlError("request is not an object with a 'command' string")
        argument = data.get("argument")
        if argument is not None and not isinstance(argument, str):
            raise ControlError(f"argument of {data['command']!r} must be a string, got {argument!r}")
        return cls(data["command"], argument)


@dataclass(frozen=True)
class DeviceChoice:
    """A device the daemon could run on, as the tray's Device menu offers it."""

    name: str  # "cuda:0" or "cpu": what `svdaemon device NAME` takes
    label: str  # "NVIDIA GeForce RTX 4090", "CPU"
    free_mb: int | None = None  # None where it cannot be read without disturbing the card
    total_mb: int | None = None


@dataclass(frozen=True)
class StatusSnapshot:
    """What the daemon is doing now, as the CLI and the tray show it. Times are seconds (epoch for start)."""

    state: DaemonState
    queue: dict[str, int]
    current_file: str | None
    progress: float | None
    audio_done_s: float | None
    audio_total_s: float | None
    device: str
    precision: str
    vram_used_mb: int | None
    vram_total_mb: int | None
    paused: bool
    pause_reason: str | None
    last_error: str | None
    pid: int
    started_at_s: float
    version: str
    vram_free_mb: int | None = None  # free on the whole card, beside vram_used_mb (svdaemon's) and the total
    notice: str | None = (
        None  # something the user should know that is not an error (half precision fell back)
    )
    devices: tuple[DeviceChoice, ...] = ()  # where `svdaemon device NAME` can move it: each GPU, then the CPU
    watch: tuple[str, ...] = ()  # the watched folders
    log_file: str | None = None
    pause_kind: str | None = None  # why it stands aside, for the tray's icon: user, vram or no_device

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict with stable keys (the field names); `state` as its string value."""
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: object) -> StatusSnapshot:
        """Read `to_json`'s dict; keys a newer daemon added are ignored so an older client still reads it."""
        if not isinstance(data, Mapping):
            raise ControlError(f"status snapshot is not an object: {data!r}")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise ControlError(f"status snapshot lacks {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}  # an older daemon's lacks some
        try:
            values["state"] = DaemonState(values["state"])
            values["queue"] = {str(state): int(count) for state, count in dict(values["queue"]).items()}
            values["devices"] = tuple(
                _known_fields(DeviceChoice, device) for device in values.get("devices", ())
            )
            values["watch"] = tuple(str(folder) for folder in values.get("watch", ()))
        except (ValueError, TypeError) as exc:
            raise ControlError(f"status snapshot is malformed: {exc}") from exc
        return cls(**values)


def _known_fields(cls, data: Mapping[str, object]):
    """`cls` from the keys it knows: a newer daemon may send more."""
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Reply:
    ok: bool
    message: str
    snapshot: StatusSnapshot | None = None

    def to_json(self) -> dict[str, object]:
        snapshot = None if self.snapshot is None else self.snapshot.to_json()
        return {"ok": self.ok, "message": self.message, "snapshot": snapshot}

    @classmethod
    def from_json(cls, data: object) -> Reply:
        if not isinstance(data, Mapping) or not isinstance(data.get("ok"), bool):
            raise ControlError(f"reply is not an object with an 'ok' flag: {data!r}")
        snapshot = data.get("snapshot")
        return cls(
            data["ok"],
            str(data.get("message", "")),
            None if snapshot is None else StatusSnapshot.from_json(snapshot),
        )


def fallback_dir(uid: int) -> Path:
    """Where sockets go when `XDG_RUNTIME_DIR` is unset: a 0700 folder of this user's under /tmp."""
    return _TMP / f"svdaemon-{uid}"


def socket_path(state_dir: Path, runtime_dir: Path | None, uid: int) -> Path:
    """`state_dir/control.sock`, or, when that exceeds sun_path, a short name keyed by a hash of state_dir."""
    preferred = state_dir / SOCKET_NAME
    if len(os.fsencode(preferred)) <= SUN_PATH_MAX:
        return preferred
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    return (runtime_dir or fallback_dir(uid)) / f"svdaemon-{digest}.sock"


def endpoint(state_dir: Path) -> Path:
    """The socket path for this state_dir in this environment; daemon and clients both call this."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    # The XDG spec says a relative XDG_RUNTIME_DIR is invalid and must be ignored.
    runtime_dir = Path(runtime) if os.path.isabs(runtime) else None
    return socket_path(Path(os.path.abspath(state_dir.expanduser())), runtime_dir, os.getuid())


def request(state_dir: Path, command: Command, timeout_s: float = 1.0) -> Reply:
    """Send one command to the running daemon and return its reply, or fail within about `timeout_s`."""
    path = endpoint(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(os.fsencode(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(f"no svdaemon is running (nothing listens on {path})") from exc
        except OSError as exc:
            raise ControlError(f"cannot reach svdaemon at {path}: {exc}") from exc
        try:
            sock.sendall(_encode(command.to_json()))
            line = _read_line(sock, MAX_REPLY_BYTES)
        except TimeoutError as exc:
            raise ControlError(
                f"svdaemon did not answer {command.name!r} within {timeout_s:g} s ({path})"
            ) from exc
        except OSError as exc:
            raise ControlError(f"the control connection to svdaemon failed ({path}): {exc}") from exc
    if line is None:
        raise ControlError(f"svdaemon sent no reply or one over {MAX_REPLY_BYTES} bytes ({path})")
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"svdaemon's reply is not JSON ({path}): {exc}") from exc
    return Reply.from_json(data)


class ControlServer:
    """The daemon's end: a thread that answers one request per connection, one connection at a time.

    `handle` runs in the server thread and must return quickly (set a flag; the worker acts between batches):
    while it runs, other clients wait and time out rather than hang.
    """

    def __init__(
        self,
        state_dir: Path,
        snapshot: Callable[[], StatusSnapshot],
        handle: Callable[[Command], Reply],
    ) -> None:
        self._state_dir = state_dir
        self._snapshot = snapshot
        self._handle = handle
        self.path = endpoint(state_dir)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        assert self._thread is None, "ControlServer started twice"
        self._prepare_parent()
        self._refuse_live_daemon()
        self._listener = self._bind_private()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="svdaemon-control", daemon=True)
        self._thread.start()
        log.info("control socket listening at %s", self.path)

    def stop(self) -> None:
        """Stop answering, remove the socket if it is still ours, and join the server thread."""
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        assert self._listener is not None
        self._listener.close()
        self._listener = None
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _prepare_parent(self) -> None:
        parent = self.path.parent
        if parent != fallback_dir(os.getuid()):
            parent.mkdir(parents=True, exist_ok=True)
            return
        # A shared /tmp: the folder must be ours and closed to others, or someone could swap the socket.
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o700)
        info = os.lstat(parent)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise StartupError(f"{parent} is not a private folder of this user; remove it and start again")

    def _refuse_live_daemon(self) -> None:
        """A socket file that answers belongs to another daemon; one that refuses is left by a crash."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise StartupError(f"{self.path} exists and is not a socket; move it away and start again")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(SERVER_IO_TIMEOUT_S)
            try:
                probe.connect(os.fsencode(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                log.warning("replacing the stale control socket %s left by a daemon that stopped", self.path)
                return
            except TimeoutError:
                pass  # a daemon too busy to accept is still alive
        raise StartupError(f"another svdaemon is running: its control socket {self.path} answers")

    def _bind_private(self) -> socket.socket:
        """Bind inside a fresh 0700 folder, chmod 0600, listen, then rename into place.

        The socket is never reachable by others, and the process-wide umask (which concurrent sidecar writes
        rely on) is never touched. The staging path, `parent/.XXXXXXXX/s`, is shorter than any final name, so
        it fits sun_path whenever the final path does. Renaming also replaces a stale socket atomically.
        """
        staging = self.path.parent / f".{secrets.token_hex(4)}"
        os.mkdir(staging, mode=0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bound = staging / "s"
            sock.bind(os.fsencode(bound))
            os.chmod(bound, 0o600)
            sock.listen()
            os.rename(bound, self.path)
            self._inode = os.lstat(self.path).st_ino
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot create the control socket {self.path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging / "s")
            os.rmdir(staging)
        return sock

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                try:
                    conn, _ = self._listener.accept()
                except OSError as exc:
                    log.debug("control accept failed: %s", exc)
                    continue
                with conn:
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(SERVER_IO_TIMEOUT_S)
        try:
            line = _read_line(conn, MAX_REQUEST_BYTES)
            reply = self._reply_to(line)
            conn.sendall(_encode(reply.to_json()))
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        except Exception:  # e.g. a snapshot that is not JSON-ready: log it, keep the channel open
            log.exception("control request failed inside the daemon")

    def _reply_to(self, line: bytes | None) -> Reply:
        if line is None:
            return Reply(False, f"request missing or over {MAX_REQUEST_BYTES} bytes")
        try:
            command = Command.from_json(json.loads(line))
        except ValueError as exc:
            return Reply(False, f"request is not JSON: {exc}")
        except ControlError as exc:
            return Reply(False, str(exc))
        try:
            reply = Reply(True, "") if command.name == "status" else self._handle(command)
            if reply.snapshot is None:
                reply = Reply(reply.ok, reply.message, self._snapshot())
        except Exception as exc:  # a bug in the daemon's handler must not stop the control channel
            log.exception("control command %s failed", command.name)
            return Reply(False, f"{command.name} failed inside the daemon: {exc}")
        return reply


def _encode(data: Mapping[str, object]) -> bytes:
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def _read_line(sock: socket.socket, limit: int) -> bytes | None:
    """One newline-terminated line (or all data up to EOF), or None when it is empty or over `limit` bytes."""
    buffer = bytearray()
    while b"\n" not in buffer and len(buffer) <= limit:
        chunk = sock.recv(limit + 1 - len(buffer))
        if not chunk:
            break
        buffer += chunk
    line = bytes(buffer).split(b"\n", 1)[0]
    if not line.strip() or len(line) > limit:
        return None
    return line
