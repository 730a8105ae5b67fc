"""`svdaemon run` as a real process on real folders with the tiny model: drop, status, lock, signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from svdaemon.config import Config
from svdaemon.control import DaemonState
from svdaemon.daemon import Daemon
from svdaemon.heartbeat import STUCK_FLOOR_S, Heartbeat
from svdaemon.sd_notify import Notifier
from svdaemon.synthetic_speech import build_track

from doubles import wait_for
from media import write_audio

pytestmark = pytest.mark.integration

SETTLE_S = 0.5


def svdaemon(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "svdaemon.cli", *args], capture_output=True, text=True, **kwargs
    )


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndevice: cpu\nstate_dir: {tmp_path / 'state'}\nsettle_s: {SETTLE_S}\n"
        f"rescan_interval_s: 5\nwatch:\n  - path: {inbox}\n"
    )
    return config, inbox


@pytest.fixture
def daemon(setup):
    config, _ = setup
    process = subprocess.Popen(
        [sys.executable, "-m", "svdaemon.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    idle = lambda: "state: idle" in svdaemon("status", "--config", str(config)).stdout  # noqa: E731
    assert wait_for(idle, 120), "the daemon never became idle"
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def test_a_dropped_file_gets_its_sidecars_and_sigterm_stops_cleanly(setup, daemon, tmp_path):
    config, inbox = setup
    speech = build_track([0.5, "The museum will open a new gallery in November", 1.0]).samples
    ten_seconds = np.resize(speech, 16000 * 10)
    staged = write_audio(tmp_path / "talk.wav", ten_seconds, 16000)
    dropped_at = time.monotonic()
    os.replace(staged, inbox / "talk.wav")
    # The latency bound: a 10 s file in an idle daemon has its sidecars within settle_s + 5 s.
    assert wait_for(lambda: (inbox / "talk.srt").exists() and (inbox / "talk.txt").exists(), SETTLE_S + 5)
    latency_s = time.monotonic() - dropped_at
    status = svdaemon("status", "--config", str(config))
    assert status.returncode == 0 and "1 done" in status.stdout, (status.stdout, latency_s)
    shown = json.loads(svdaemon("status", "--json", "--config", str(config)).stdout)
    assert shown["devices"][-1] == {"name": "cpu", "label": "CPU", "free_mb": None, "total_mb": None}
    assert shown["watch"] == [str(inbox)] and Path(shown["log_file"]).is_file()

    moved = svdaemon("device", "cpu", "--config", str(config))
    assert moved.returncode == 0 and "moving to cpu after the current batch" in moved.stdout, moved
    refused = svdaemon("device", "cuda:3", "--config", str(config))
    assert refused.returncode == 1 and 'device: "cuda:3"' in refused.stdout, refused

    second = svdaemon("run", "--config", str(config), timeout=60)
    assert second.returncode == 75 and "another svdaemon" in second.stderr

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    assert not (config.parent / "state" / "control.sock").exists()
    assert svdaemon("status", "--config", str(config)).returncode == 3


def test_sighup_applies_new_watch_folders(setup, daemon, tmp_path):
    """A new root's own formats and output_dir apply at once, as they would after a restart."""
    config, _ = setup
    extra, own, own_out = tmp_path / "extra", tmp_path / "own", tmp_path / "own-out"
    extra.mkdir()
    own.mkdir()
    config.write_text(
        config.read_text()
        + f"  - path: {extra}\n  - path: {own}\n    formats: [vtt, json]\n    output_dir: {own_out}\n"
    )
    daemon.send_signal(signal.SIGHUP)
    speech = build_track([0.3, "Rain fell all night", 0.3]).samples
    for name in ("late.wav", "mine.wav"):
        write_audio(tmp_path / name, speech, 16000)
    time.sleep(1.0)  # the reload happens within the daemon's 0.2 s signal loop
    os.replace(tmp_path / "late.wav", extra / "late.wav")
    os.replace(tmp_path / "mine.wav", own / "mine.wav")
    assert wait_for(lambda: (extra / "late.srt").exists(), 30)
    assert wait_for(lambda: (own_out / "mine.json").exists(), 30)
    assert sorted(p.name for p in own_out.iterdir()) == ["mine.json", "mine.vtt"]
    assert sorted(p.name for p in own.iterdir()) == ["mine.wav"]


def test_an_unknown_config_key_exits_2_naming_it(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\nwatch_folders: []\n")
    done = svdaemon("run", "--config", str(config), timeout=60)
    assert done.returncode == 2 and "watch_folders" in done.stderr


def test_files_are_decoded_in_parallel_on_machines_with_cores_to_spare():
    from svdaemon.daemon import decoder_count

    assert [decoder_count(cores) for cores in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]


def receive(listener: socket.socket, messages: list[str]) -> list[str]:
    """Add the next datagram's lines to `messages`, and return them all."""
    messages += listener.recv(4096).decode().splitlines()
    return messages


def test_under_systemd_it_reports_ready_feeds_the_watchdog_and_says_it_stops(setup, tmp_path):
    """A real NOTIFY_SOCKET datagram socket, as systemd gives a Type=notify service; tray: on without a
    display, so the tray process exits 2 and the daemon goes on headless."""
    config, _ = setup
    config.write_text(config.read_text() + "tray: on\n")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(60)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env |= {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "svdaemon.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        messages = []
        while messages.count("WATCHDOG=1") < 3:
            receive(listener, messages)
        assert messages[0].startswith("EXTEND_TIMEOUT_USEC=")
        assert messages.index("READY=1") < messages.index("WATCHDOG=1")
        log_file = tmp_path / "state" / "svdaemon.log"
        headless = "the tray icon: it cannot run here (no display or no tray support)"
        assert wait_for(lambda: headless in log_file.read_text(), 60)
        pings = messages.count("WATCHDOG=1")
        while messages.count("WATCHDOG=1") < pings + 2:  # the worker runs: the watchdog is still fed
            receive(listener, messages)
        assert wait_for(
            lambda: any(m.startswith("STATUS=svdaemon — idle") for m in receive(listener, messages)), 30
        )
        process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            receive(listener, messages)
        assert process.wait(timeout=15) == 0
    finally:
        listener.close()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


class StuckClock:
    """A clock the test moves: the worker's heartbeat then reads as silent for as long as it likes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_is_fed_while_the_worker_moves_and_starves_when_it_is_stuck(tmp_path, caplog):
    """The daemon's feeder against a real notify socket; the worker is a stand-in whose heartbeat runs on
    a test clock, because a real hang (a GPU driver that never returns) cannot be made here."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(0.5)
    clock = StuckClock()
    daemon = Daemon(Config(state_dir=tmp_path), None)
    daemon.notifier = Notifier(str(tmp_path / "notify.sock"), watchdog_usec=100_000)
    daemon.worker = SimpleNamespace(alive=True, heartbeat=Heartbeat(clock))
    daemon._turned_at = float("inf")  # the main loop counts as turning
    daemon.state = DaemonState.IDLE  # loaded: while the model loads, nothing counts as stuck
    feeder = threading.Thread(target=daemon._feed_watchdog)
    feeder.start()
    try:
        assert receive(listener, []) == ["WATCHDOG=1"]
        clock.now += STUCK_FLOOR_S + 1
        time.sleep(0.2)
        drain(listener)
        with pytest.raises(TimeoutError):
            listener.recv(4096)  # stuck: nothing for 0.5 s, five intervals
        assert "the worker has not moved for 301 s" in caplog.text
        daemon.worker.heartbeat.beat()
        assert receive(listener, []) == ["WATCHDOG=1"]
    finally:
        daemon._stop.set()
        feeder.join()
        listener.close()


def drain(listener: socket.socket) -> None:
    """Drop the datagrams already waiting (sent before the worker stuck)."""
    listener.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            listener.recv(4096)
    listener.settimeout(0.5)


def test_only_the_built_in_watch_folder_is_made(tmp_path, monkeypatch):
    """A folder the user named may be a share not mounted yet: it is watched for, never made."""
    from svdaemon.config import WatchRoot
    from svdaemon.daemon import make_default_watch_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    share = tmp_path / "share"
    assert make_default_watch_folder((WatchRoot(share),)) is None and not share.exists()
    assert make_default_watch_folder(Config().watch) == tmp_path / "Transcribe"
    assert (tmp_path / "Transcribe").is_dir()
    assert make_default_watch_folder(Config().watch) is None  # there already
