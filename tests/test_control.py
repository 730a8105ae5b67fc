"""The control channel: snapshot JSON, the socket path rule, and a real server thread on a real Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from svdaemon.control import (
    MAX_REQUEST_BYTES,
    SOCKET_NAME,
    SUN_PATH_MAX,
    Command,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    DaemonState,
    Reply,
    StatusSnapshot,
    endpoint,
    fallback_dir,
    request,
    socket_path,
)
from svdaemon.errors import StartupError

from doubles import SNAPSHOT


def test_snapshot_json_round_trip_ignores_unknown_keys() -> None:
    data = json.loads(json.dumps(SNAPSHOT.to_json()))
    data["added_by_a_newer_daemon"] = {"anything": 1}
    data["devices"][0]["added_too"] = "pcie 5.0"
    assert data["state"] == "working"
    assert StatusSnapshot.from_json(data) == SNAPSHOT


def test_snapshot_from_an_older_daemon_without_the_newer_fields_still_reads() -> None:
    data = SNAPSHOT.to_json()
    for newer in ("devices", "watch", "log_file", "notice"):
        del data[newer]
    older = StatusSnapshot.from_json(data)
    assert older.devices == () and older.watch == () and older.log_file is None


def test_snapshot_missing_key_is_a_clear_error() -> None:
    data = SNAPSHOT.to_json()
    del data["device"]
    with pytest.raises(ControlError, match="device"):
        StatusSnapshot.from_json(data)


def test_commands_are_validated() -> None:
    assert Command("device", "cpu").to_json() == {"command": "device", "argument": "cpu"}
    with pytest.raises(ControlError, match="unknown command 'reboot'"):
        Command("reboot")
    with pytest.raises(ControlError, match="needs a device name"):
        Command("device")
    with pytest.raises(ControlError, match="takes no argument"):
        Command("pause", "now")


def test_short_state_dir_keeps_its_socket() -> None:
    assert socket_path(Path("/var/lib/sv"), Path("/run/user/1000"), 1000) == Path("/var/lib/sv") / SOCKET_NAME


def test_long_state_dir_moves_the_socket_to_the_runtime_dir() -> None:
    long_dir = Path("/home/u") / ("d" * SUN_PATH_MAX)
    path = socket_path(long_dir, Path("/run/user/1000"), 1000)
    assert path.parent == Path("/run/user/1000")
    assert path.name.startswith("svdaemon-") and path.suffix == ".sock"
    assert path == socket_path(long_dir, Path("/run/user/1000"), 1000)
    assert path != socket_path(long_dir / "other", Path("/run/user/1000"), 1000)


def test_long_state_dir_without_runtime_dir_uses_a_per_user_tmp_folder() -> None:
    path = socket_path(Path("/home/u") / ("d" * SUN_PATH_MAX), None, 1234)
    assert path.parent == fallback_dir(1234) == Path("/tmp/svdaemon-1234")


def test_importing_control_loads_neither_torch_nor_funasr() -> None:
    code = "import sys, svdaemon.control; sys.exit(sorted({'torch', 'funasr'} & set(sys.modules)) or 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


class FakeDaemon:
    """Stands for the daemon's side of the channel: records commands and reflects pause in its snapshot."""

    def __init__(self) -> None:
        self.received: list[Command] = []
        self.snapshot = SNAPSHOT

    def status(self) -> StatusSnapshot:
        return self.snapshot

    def handle(self, command: Command) -> Reply:
        self.received.append(command)
        if command.name == "pause":
            self.snapshot = replace(self.snapshot, state=DaemonState.PAUSED, paused=True, pause_reason="user")
        elif command.name == "device":
            self.snapshot = replace(self.snapshot, device=command.argument)
        return Reply(True, f"{command.name} accepted")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def daemon(state_dir: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon()
    with ControlServer(state_dir, fake.status, fake.handle):
        yield fake


def _raw_exchange(path: Path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(os.fsencode(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return json.loads(sock.makefile("rb").readline())


@pytest.mark.integration
def test_every_command_round_trips(daemon: FakeDaemon, state_dir: Path) -> None:
    status = request(state_dir, Command("status"))
    assert status.ok and status.snapshot == SNAPSHOT
    assert daemon.received == []

    paused = request(state_dir, Command("pause"))
    assert paused == Reply(True, "pause accepted", daemon.snapshot)
    assert paused.snapshot.paused and paused.snapshot.pause_reason == "user"

    moved = request(state_dir, Command("device", "cpu"))
    assert moved.ok and moved.snapshot.device == "cpu"

    for name in ("resume", "quit"):
        assert request(state_dir, Command(name)).message == f"{name} accepted"
    assert daemon.received == [
        Command("pause"),
        Command("device", "cpu"),
        Command("resume"),
        Command("quit"),
    ]


@pytest.mark.integration
def test_socket_is_private_and_removed_on_stop(state_dir: Path) -> None:
    fake = FakeDaemon()
    with ControlServer(state_dir, fake.status, fake.handle) as server:
        assert server.path == state_dir / SOCKET_NAME
        mode = os.lstat(server.path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert [p.name for p in state_dir.iterdir()] == [SOCKET_NAME]
    assert not server.path.exists()
    with pytest.raises(DaemonNotRunning):
        request(state_dir, Command("status"))


@pytest.mark.integration
def test_long_state_dir_serves_from_the_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    state_dir = tmp_path / ("s" * 60) / ("t" * 60)
    fake = FakeDaemon()
    with ControlServer(state_dir, fake.status, fake.handle) as server:
        assert server.path.parent == runtime
        assert stat.S_IMODE(os.lstat(server.path).st_mode) == 0o600
        assert request(state_dir, Command("status")).snapshot == SNAPSHOT


@pytest.mark.integration
def test_long_state_dir_without_runtime_dir_serves_from_a_private_tmp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    folder = fallback_dir(os.getuid())
    existed = folder.exists()
    state_dir = tmp_path / ("s" * 60) / ("t" * 60)
    fake = FakeDaemon()
    try:
        with ControlServer(state_dir, fake.status, fake.handle) as server:
            assert server.path.parent == folder
            assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
            assert request(state_dir, Command("status")).snapshot == SNAPSHOT
    finally:
        if not existed:
            folder.rmdir()


@pytest.mark.integration
def test_stale_socket_from_a_crash_is_replaced(state_dir: Path) -> None:
    state_dir.mkdir()
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(os.fsencode(endpoint(state_dir)))
    crashed.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves
    with pytest.raises(DaemonNotRunning):
        request(state_dir, Command("status"))
    fake = FakeDaemon()
    with ControlServer(state_dir, fake.status, fake.handle):
        assert request(state_dir, Command("status")).ok


@pytest.mark.integration
def test_second_server_on_a_live_socket_is_refused(daemon: FakeDaemon, state_dir: Path) -> None:
    other = FakeDaemon()
    with pytest.raises(StartupError, match="another svdaemon is running"):
        ControlServer(state_dir, other.status, other.handle).start()
    assert request(state_dir, Command("status")).snapshot == SNAPSHOT


@pytest.mark.integration
def test_no_daemon_means_daemon_not_running(state_dir: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="no svdaemon is running"):
        request(state_dir, Command("status"))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"{not json\n", "not JSON"),
        (b'{"command": "reboot"}\n', "unknown command"),
        (b'{"command": "device", "argument": 3}\n', "must be a string"),
        (b"x" * (MAX_REQUEST_BYTES + 10), "over 4096 bytes"),
        (b"", "request missing"),
    ],
)
def test_bad_requests_get_an_error_and_the_server_goes_on(
    daemon: FakeDaemon, state_dir: Path, payload: bytes, complaint: str
) -> None:
    reply = _raw_exchange(endpoint(state_dir), payload)
    assert reply["ok"] is False and complaint in reply["message"]
    assert request(state_dir, Command("status")).snapshot == SNAPSHOT
    assert daemon.received == []


@pytest.mark.integration
def test_a_failing_handler_is_an_error_reply(state_dir: Path) -> None:
    def broken(command: Command) -> Reply:
        raise RuntimeError("worker is gone")

    with ControlServer(state_dir, lambda: SNAPSHOT, broken):
        reply = request(state_dir, Command("pause"))
        assert not reply.ok and "worker is gone" in reply.message
        assert request(state_dir, Command("status")).ok


@pytest.mark.integration
def test_slow_handler_gives_the_client_a_timeout_not_a_hang(state_dir: Path) -> None:
    release = threading.Event()

    def slow(command: Command) -> Reply:
        release.wait(timeout=30)
        return Reply(True, "late")

    with ControlServer(state_dir, lambda: SNAPSHOT, slow):
        try:
            with pytest.raises(ControlError, match=r"did not answer 'pause' within 0\.2 s"):
                request(state_dir, Command("pause"), timeout_s=0.2)
        finally:
            release.set()
        assert request(state_dir, Command("status")).ok
