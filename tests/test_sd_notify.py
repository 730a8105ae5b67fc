"""systemd's notify protocol against a real datagram socket, as systemd listens on one."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from svdaemon.sd_notify import Notifier


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify.sock")
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_messages_arrive_as_key_value_lines(listener):
    sock, path = listener
    notifier = Notifier(path, watchdog_usec=20_000_000)
    assert notifier.active and notifier.watchdog_s == 20.0
    notifier.ready("queue recovered; loading the model")
    assert received(sock) == {"READY": "1", "STATUS": "queue recovered; loading the model"}
    notifier.extend_timeout(90, "opening the queue")
    assert received(sock) == {"EXTEND_TIMEOUT_USEC": "90000000", "STATUS": "opening the queue"}
    notifier.alive()
    assert received(sock) == {"WATCHDOG": "1"}
    notifier.stopping()
    assert received(sock) == {"STOPPING": "1", "STATUS": "stopping"}


def test_an_abstract_socket_address_is_understood():
    name = f"svdaemon-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier("@" + name).status("idle")
        assert received(sock) == {"STATUS": "idle"}


def test_outside_systemd_nothing_is_sent_and_nothing_fails():
    notifier = Notifier.from_environment({})
    assert not notifier.active and notifier.watchdog_s is None
    notifier.ready("x")
    notifier.alive()


def test_the_watchdog_is_ours_only_when_its_pid_is_ours():
    env = {"NOTIFY_SOCKET": "/run/user/1000/systemd/notify", "WATCHDOG_USEC": "60000000"}
    assert Notifier.from_environment(env).watchdog_s == 60.0
    assert Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 60.0
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "1"}).watchdog_s is None


def test_a_vanished_socket_is_logged_once_and_the_daemon_goes_on(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, "svdaemon.sd_notify"):
        notifier.status("one")
        notifier.status("two")
    assert caplog.text.count("cannot notify systemd") == 1


def test_a_reader_that_stops_reading_never_blocks_the_sender(listener, caplog):
    """systemd stalled: its socket's queue (10 datagrams by default) fills, and each further message is
    dropped at once instead of blocking the daemon's main loop, its watchdog feeder and its stop."""
    _, path = listener
    notifier = Notifier(path, watchdog_usec=1_000_000)
    sender = threading.Thread(target=lambda: [notifier.alive() for _ in range(200)], daemon=True)
    with caplog.at_level(logging.WARNING, logger="svdaemon.sd_notify"):
        sender.start()
        sender.join(timeout=5)
    assert not sender.is_alive(), "a full notify socket blocked the sender"
    warnings = [r.getMessage() for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not once per dropped message
