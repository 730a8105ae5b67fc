"""The tray without a display: icon pixels per state, title strings, the menu item by item, the backend
choice, notices, and the menu's actions end to end against a real `svdaemon run`."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
import subprocess
import sys
import threading
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from svdaemon.config import load_config
from svdaemon.control import Command, DaemonState, DeviceChoice, StatusSnapshot, endpoint
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import ErrorKind, JobQueue
from svdaemon.notifications import FailedFile, Notice, NoticeTracker
from svdaemon.status_text import title
from svdaemon.tray import (
    Actions,
    Desktop,
    Reading,
    StatusPoller,
    choose_backend,
    describe_backend,
    main,
    probe_desktop,
    pystray_menu,
    read_status,
    view_of,
)
from svdaemon.tray_icon import (
    BADGE_FILL,
    FAILED_DOT,
    GLYPH_COLOURS,
    ICON_SIZE,
    WHITE,
    IconLook,
    TrayState,
    badge_text,
    draw_icon,
    icon_look,
    tray_state,
)
from svdaemon.tray_menu import (
    SEPARATOR,
    Fallback,
    Item,
    OpenPath,
    Quit,
    RadioItem,
    SendCommand,
    ShowFailed,
    StatusLine,
    Submenu,
    build_menu,
    latin1_safe,
)

from doubles import SNAPSHOT, wait_for
from make_tray_screenshot import private_session_bus

QUEUE = {"queued": 0, "running": 0, "done": 0, "failed": 0, "skipped": 0}
IDLE = dataclasses.replace(
    SNAPSHOT,
    state=DaemonState.IDLE,
    queue=QUEUE,
    current_file=None,
    progress=None,
    last_error=None,
    vram_used_mb=0,
    vram_total_mb=24564,
)
ON_CPU_IDLE = dataclasses.replace(IDLE, device="cpu", vram_used_mb=None, vram_total_mb=None)
VRAM_REASON = "another program needs the GPU's memory (800 MB free on cuda:0)"
NO_DEVICE = (
    "CUDA error: device lost; no other device (set fallback_to_cpu or choose one with svdaemon device)"
)


def snapshot_for(state: TrayState) -> StatusSnapshot:
    """A daemon snapshot that the tray shows as `state`."""
    working = dataclasses.replace(SNAPSHOT, pause_reason=None, paused=False)
    return {
        TrayState.IDLE: IDLE,
        TrayState.WORKING: working,
        TrayState.ON_CPU: dataclasses.replace(working, device="cpu", vram_used_mb=None, vram_total_mb=None),
        TrayState.PAUSED_BY_USER: dataclasses.replace(
            working, state=DaemonState.PAUSED, paused=True, pause_reason="user", pause_kind="user"
        ),
        TrayState.YIELDING_VRAM: dataclasses.replace(
            working, state=DaemonState.PAUSED, paused=True, pause_reason=VRAM_REASON, pause_kind="vram"
        ),
        TrayState.ERROR: dataclasses.replace(
            working, state=DaemonState.PAUSED, paused=True, pause_reason=NO_DEVICE, pause_kind="no_device"
        ),
    }[state]


# ---- icon -----------------------------------------------------------------------------------------------


def opaque_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> list[tuple[int, int, int]]:
    rgba = np.asarray(image.crop(box)).reshape(-1, 4)
    return [tuple(int(v) for v in pixel[:3]) for pixel in rgba if pixel[3] == 255]


def glyph_colour(image: Image.Image) -> tuple[int, int, int]:
    """The commonest opaque colour, white aside, in the top-left quadrant (clear of badge and failed dot)."""
    quadrant = opaque_pixels(image, (0, 0, ICON_SIZE // 2, ICON_SIZE // 2))
    return Counter(pixel for pixel in quadrant if pixel != WHITE).most_common(1)[0][0]


def count_colour(image: Image.Image, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> int:
    return sum(1 for pixel in opaque_pixels(image, box) if pixel == colour)


def white_mask(image: Image.Image) -> frozenset[tuple[int, int]]:
    """Where the glyph's symbol is (the badge's corner left out)."""
    pixels = image.load()
    return frozenset((x, y) for x in range(40) for y in range(40) if pixels[x, y] == (*WHITE, 255))


BOTTOM_RIGHT = (ICON_SIZE // 2, ICON_SIZE // 2, ICON_SIZE, ICON_SIZE)
TOP_RIGHT = (44, 0, ICON_SIZE, 20)


@pytest.mark.parametrize("state", list(TrayState))
def test_every_state_has_its_own_glyph_colour(state):
    image = draw_icon(IconLook(state, pending=0, has_failed=False))
    assert image.size == (ICON_SIZE, ICON_SIZE) and image.mode == "RGBA"
    assert glyph_colour(image) == GLYPH_COLOURS[state]


def test_states_differ_at_a_glance_by_colour_and_symbol():
    colours = list(GLYPH_COLOURS.values())
    distance = min(
        sum((a - b) ** 2 for a, b in zip(first, second, strict=True)) ** 0.5
        for i, first in enumerate(colours)
        for second in colours[i + 1 :]
    )
    assert distance > 60, distance
    symbols = {state: white_mask(draw_icon(IconLook(state, 0, False))) for state in TrayState}
    # check, sound bars, pause bars, `!`; the same symbol only where the colour says the rest
    assert (
        len(
            {
                symbols[s]
                for s in (TrayState.IDLE, TrayState.WORKING, TrayState.PAUSED_BY_USER, TrayState.ERROR)
            }
        )
        == 4
    )
    assert symbols[TrayState.WORKING] == symbols[TrayState.ON_CPU]
    assert symbols[TrayState.PAUSED_BY_USER] == symbols[TrayState.YIELDING_VRAM]


def test_not_running_is_a_hollow_ring():
    image = draw_icon(IconLook(TrayState.NOT_RUNNING, 0, False))
    assert image.getpixel((32, 32))[3] == 0  # transparent centre
    assert image.getpixel((6, 32))[:3] == GLYPH_COLOURS[TrayState.NOT_RUNNING]


def test_the_badge_shows_the_queue_depth_and_99_plus_above_99():
    assert [badge_text(n) for n in (0, 1, 5, 99, 100, 12345)] == [None, "1", "5", "99", "99+", "99+"]
    empty, five, many = (draw_icon(IconLook(TrayState.WORKING, n, False)) for n in (0, 5, 150))
    assert count_colour(empty, BADGE_FILL, BOTTOM_RIGHT) == 0
    assert count_colour(five, BADGE_FILL, BOTTOM_RIGHT) > 100
    assert count_colour(five, WHITE, (40, 40, 60, 60)) > 20  # the digit
    assert five.crop(BOTTOM_RIGHT).tobytes() != many.crop(BOTTOM_RIGHT).tobytes()
    widest_left = min(x for x in range(ICON_SIZE) if many.getpixel((x, 48))[:3] == BADGE_FILL)
    assert widest_left < min(x for x in range(ICON_SIZE) if five.getpixel((x, 48))[:3] == BADGE_FILL)
    assert draw_icon(IconLook(TrayState.WORKING, 100, False)) == many


def test_a_red_dot_marks_failed_files():
    without, with_failed = (draw_icon(IconLook(TrayState.IDLE, 0, failed)) for failed in (False, True))
    assert count_colour(without, FAILED_DOT, TOP_RIGHT) == 0
    assert count_colour(with_failed, FAILED_DOT, TOP_RIGHT) > 50


def test_the_icon_scales_to_tray_sizes():
    assert draw_icon(IconLook(TrayState.IDLE, 3, True), size=22).size == (22, 22)


@pytest.mark.parametrize("state", [s for s in TrayState if s is not TrayState.NOT_RUNNING])
def test_snapshots_map_to_their_state(state):
    assert tray_state(snapshot_for(state)) is state


def test_the_look_counts_queued_and_running_files_and_failures():
    assert icon_look(SNAPSHOT) == IconLook(TrayState.WORKING, pending=4, has_failed=True)
    assert icon_look(None) == IconLook(TrayState.NOT_RUNNING, 0, False)
    loading = dataclasses.replace(ON_CPU_IDLE, state=DaemonState.LOADING)
    assert tray_state(loading) is TrayState.ON_CPU  # busy loading: not the idle check mark


# ---- title ----------------------------------------------------------------------------------------------


def test_the_title_has_the_issue_form():
    lecture = dataclasses.replace(
        snapshot_for(TrayState.WORKING),
        queue={**QUEUE, "queued": 2, "running": 1},
        current_file="/home/u/Transcribe/lecture.mp4",
        progress=0.41,
        vram_used_mb=1843,
        vram_total_mb=24564,
    )
    assert title(lecture) == "svdaemon — 3 to do · lecture.mp4 41 % · cuda:0 1.8 / 24.0 GB"


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        (None, "svdaemon — not running"),
        (IDLE, "svdaemon — idle · cuda:0 0.0 / 24.0 GB"),
        (
            snapshot_for(TrayState.WORKING),
            "svdaemon — 4 to do · talk.mp4 25 % · 1 failed · cuda:0 1.8 / 8.0 GB",
        ),
        (snapshot_for(TrayState.ON_CPU), "svdaemon — 4 to do · talk.mp4 25 % · 1 failed · cpu"),
        (
            snapshot_for(TrayState.PAUSED_BY_USER),
            "svdaemon — paused · 4 to do · talk.mp4 25 % · 1 failed · cuda:0 1.8 / 8.0 GB",
        ),
        (
            dataclasses.replace(snapshot_for(TrayState.YIELDING_VRAM), current_file=None),
            "svdaemon — waiting for GPU memory · 4 to do · 1 failed · cuda:0 1.8 / 8.0 GB",
        ),
        (
            dataclasses.replace(
                snapshot_for(TrayState.ERROR), queue=QUEUE, current_file=None, vram_used_mb=None
            ),
            "svdaemon — cannot go on: CUDA error: device lost; no other device (set fallback_to_cpu or choose one wit… · cuda:0",
        ),
        (
            dataclasses.replace(ON_CPU_IDLE, state=DaemonState.LOADING),
            "svdaemon — loading the model · cpu",
        ),
        (
            dataclasses.replace(ON_CPU_IDLE, progress=0.29, current_file="/a/b.wav"),
            "svdaemon — idle · b.wav 29 % · cpu",
        ),
    ],
)
def test_titles(snapshot, expected):
    assert title(snapshot) == expected


def test_a_slow_daemon_reads_as_not_responding():
    assert title(None, "not responding") == "svdaemon — not responding"


def test_titles_for_the_xorg_backend_are_latin1():
    safe = latin1_safe("svdaemon — 1 to do · 会议.mp4 3 %")
    assert safe == "svdaemon - 1 to do · ??.mp4 3 %"
    safe.encode("latin-1")
    assert view_of(Reading(SNAPSHOT), Fallback((), "x"), latin1=True).title.startswith(
        "svdaemon - 4 to do · "
    )


# ---- menu -----------------------------------------------------------------------------------------------

FALLBACK = Fallback(("/home/u/Transcribe",), "/home/u/.local/state/svdaemon/svdaemon.log")


def test_the_menu_of_a_working_daemon_item_by_item():
    assert build_menu(SNAPSHOT, FALLBACK) == (
        StatusLine("Queue: 4 to do, 1 failed"),
        StatusLine("File: talk.mp4 25 %"),
        StatusLine("Device: cuda:0, VRAM 1.8 / 8.0 GB"),
        StatusLine("Last error: bad.mp3: not an audio file"),
        SEPARATOR,
        Item("Pause", SendCommand(Command("pause"))),
        Submenu(
            "Device",
            (
                RadioItem(
                    "cuda:0 — NVIDIA GeForce RTX 4070 (4.9 GB free)",
                    SendCommand(Command("device", "cuda:0")),
                    True,
                ),
                RadioItem(
                    "cuda:1 — NVIDIA GeForce RTX 3090 (22.5 GB free)",
                    SendCommand(Command("device", "cuda:1")),
                    False,
                ),
                RadioItem("CPU", SendCommand(Command("device", "cpu")), False),
            ),
        ),
        SEPARATOR,
        Submenu(
            "Open watched folder",
            (
                Item("/home/u/Transcribe", OpenPath("/home/u/Transcribe")),
                Item("/home/u/Lectures", OpenPath("/home/u/Lectures")),
            ),
        ),
        Item("Open log", OpenPath("/home/u/.local/state/svdaemon/svdaemon.log")),
        Item("Show failed files (1)", ShowFailed()),
        SEPARATOR,
        Item("Quit svdaemon", Quit()),
    )


def test_paused_by_the_user_offers_resume_and_standing_aside_says_why():
    paused = build_menu(snapshot_for(TrayState.PAUSED_BY_USER), FALLBACK)
    assert Item("Resume", SendCommand(Command("resume"))) in paused
    yielding = build_menu(snapshot_for(TrayState.YIELDING_VRAM), FALLBACK)
    assert Item("Pause", SendCommand(Command("pause"))) in yielding
    assert StatusLine(f"Paused: {VRAM_REASON}") in yielding


def test_an_idle_daemon_on_the_cpu_with_one_folder():
    idle = dataclasses.replace(
        IDLE,
        device="cpu",
        vram_used_mb=None,
        vram_total_mb=None,
        devices=(DeviceChoice("cpu", "CPU"),),
        watch=("/w",),
    )
    menu = build_menu(idle, FALLBACK)
    assert menu[:3] == (StatusLine("Queue: empty"), StatusLine("File: none"), StatusLine("Device: cpu"))
    assert Submenu("Device", (RadioItem("CPU", SendCommand(Command("device", "cpu")), True),)) in menu
    assert Item("Open watched folder", OpenPath("/w")) in menu
    assert Item("Show failed files (0)", ShowFailed(), enabled=False) in menu


def test_without_a_daemon_the_menu_still_opens_folders_log_and_failures():
    assert build_menu(None, FALLBACK) == (
        StatusLine("svdaemon is not running"),
        SEPARATOR,
        Item("Open watched folder", OpenPath("/home/u/Transcribe")),
        Item("Open log", OpenPath("/home/u/.local/state/svdaemon/svdaemon.log")),
        Item("Show failed files", ShowFailed()),
        SEPARATOR,
        Item("Quit tray", Quit()),
    )


@pytest.fixture(scope="module")
def pystray():
    """pystray's dummy backend: the real Menu and MenuItem classes, no display needed."""
    os.environ.setdefault("PYSTRAY_BACKEND", "dummy")
    import pystray

    return pystray


def test_the_pystray_menu_follows_the_entries_and_calls_back_with_actions(pystray):
    chosen = []
    menu = pystray_menu(pystray, build_menu(SNAPSHOT, FALLBACK), chosen.append)
    items = list(menu)  # pystray folds the separators into its own
    assert [item.text for item in items] == [
        "Queue: 4 to do, 1 failed",
        "File: talk.mp4 25 %",
        "Device: cuda:0, VRAM 1.8 / 8.0 GB",
        "Last error: bad.mp3: not an audio file",
        pystray.Menu.SEPARATOR.text,
        "Pause",
        "Device",
        pystray.Menu.SEPARATOR.text,
        "Open watched folder",
        "Open log",
        "Show failed files (1)",
        pystray.Menu.SEPARATOR.text,
        "Quit svdaemon",
    ]
    assert [item.enabled for item in items[:4]] == [False] * 4
    devices = list(items[6].submenu)
    assert [(d.checked, d.radio) for d in devices] == [(True, True), (False, True), (False, True)]
    devices[2](None)
    items[5](None)
    items[12](None)
    assert chosen == [SendCommand(Command("device", "cpu")), SendCommand(Command("pause")), Quit()]


# ---- backend choice -------------------------------------------------------------------------------------

EVERYTHING = Desktop(
    platform="linux",
    desktops=(),
    x11=True,
    wayland=False,
    session_bus=True,
    gtk=True,
    appindicator=True,
    sni_host=False,
)


@pytest.mark.parametrize(
    ("changes", "backend", "said"),
    [
        ({"desktops": ("ubuntu", "gnome")}, "appindicator", "enable the AppIndicator extension"),
        ({"desktops": ("ubuntu", "gnome"), "sni_host": True}, "appindicator", "on ubuntu:gnome"),
        ({"desktops": ("kde",), "x11": False, "wayland": True}, "appindicator", "StatusNotifier"),
        ({"desktops": ("gnome",), "appindicator": False}, None, "missing: gir1.2-ayatanaappindicator3-0.1"),
        ({"desktops": ("xfce",)}, "gtk", "XEmbed system tray of xfce"),
        ({"desktops": ("xfce",), "sni_host": True}, "appindicator", "on xfce"),
        ({"gtk": False, "appindicator": False}, "xorg", "WITHOUT a menu"),
        ({"session_bus": False}, "xorg", "WITHOUT a menu"),
        ({"x11": False}, None, "no display"),
        ({"requested": "xorg"}, "xorg", "PYSTRAY_BACKEND=xorg"),
        ({"platform": "darwin", "x11": False}, "darwin", "menu bar"),
    ],
)
def test_the_backend_that_will_show_is_chosen(changes, backend, said):
    choice = choose_backend(dataclasses.replace(EVERYTHING, **changes))
    assert choice.backend == backend and said in choice.reason, choice


def test_the_probe_finds_gtk_and_the_indicator_installed_here():
    found = probe_desktop(
        {"DISPLAY": ":99", "XDG_CURRENT_DESKTOP": "ubuntu:GNOME", "XDG_RUNTIME_DIR": "/nonexistent"}
    )
    assert (found.gtk, found.appindicator, found.session_bus) == (True, True, False)
    assert found.desktops == ("ubuntu", "gnome") and found.x11 and not found.wayland
    assert describe_backend({}) == "tray: none (no display: neither DISPLAY nor WAYLAND_DISPLAY is set)"


def test_without_a_display_the_tray_exits_2_saying_why(tmp_path, monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    out = io.StringIO()
    assert main(load_config(None, {"state_dir": str(tmp_path)}), out) == 2
    assert out.getvalue() == "svdaemon tray: no display: neither DISPLAY nor WAYLAND_DISPLAY is set\n"


# ---- notices --------------------------------------------------------------------------------------------


def with_queue(**counts: int) -> StatusSnapshot:
    return dataclasses.replace(IDLE, queue={**QUEUE, **counts})


def test_notices_name_a_failed_file_and_report_a_drained_queue():
    asked = []

    def newest_failed(count: int) -> list[FailedFile]:
        asked.append(count)
        return [FailedFile("/in/会议.mp4", "not an audio file")]

    tracker = NoticeTracker(newest_failed)
    assert tracker.update(with_queue(queued=2, done=5)) == []  # the first reading is the baseline
    assert tracker.update(with_queue(queued=1, running=1, done=5)) == []
    assert tracker.update(with_queue(done=6, failed=1)) == [
        Notice("svdaemon: 会议.mp4 failed", "会议.mp4: not an audio file", "dialog-error"),
        Notice(
            "svdaemon: all files done",
            "1 file(s) transcribed; nothing left in the queue. 1 failed file(s) wait in Show failed files.",
            "dialog-information",
        ),
    ]
    assert asked == [1]
    assert tracker.update(with_queue(done=6, failed=1)) == []  # quiet stays quiet
    assert (
        tracker.update(with_queue(done=8, failed=1))[0].summary == "svdaemon: all files done"
    )  # done between reads
    assert (
        tracker.update(None) == [] and tracker.update(with_queue(done=9, failed=3)) == []
    )  # daemon came back


def test_a_burst_of_failures_names_the_first_few():
    files = [FailedFile(f"/in/{n}.wav", None) for n in range(5)]
    tracker = NoticeTracker(lambda count: files[:count])
    tracker.update(with_queue(queued=5))
    (notice,) = tracker.update(with_queue(queued=0, running=0, failed=5))
    assert notice.summary == "svdaemon: 5 files failed"
    assert notice.body == "0.wav\n1.wav\n2.wav\n… and 2 more"


def test_without_a_notification_service_it_logs_once_and_goes_on(tmp_path):
    script = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from svdaemon.notifications import DesktopNotifier, Notice;"
        "n = DesktopNotifier(); print(n.send(Notice('a', 'b', '')), n.send(Notice('c', 'd', '')))"
    )
    with private_session_bus(tmp_path) as address:
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.stdout == "False False\n", done.stderr
    assert done.stderr.count("desktop notifications are not shown") == 1, done.stderr
    assert "org.freedesktop.Notifications" in done.stderr


# ---- reading the status ---------------------------------------------------------------------------------


def test_the_poller_reads_once_a_second_and_a_mute_daemon_reads_as_not_responding(tmp_path):
    path = endpoint(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:  # accepts, never answers
        mute.bind(os.fsencode(path))
        mute.listen()
        readings: list[Reading] = []
        poller = StatusPoller(lambda: read_status(tmp_path), readings.append)
        poller.start()
        try:
            assert wait_for(lambda: len(readings) >= 2, 5)
        finally:
            poller.stop()
    assert readings[0] == Reading(None, "not responding")
    assert read_status(tmp_path / "elsewhere") == Reading(None, "not running")


# ---- actions --------------------------------------------------------------------------------------------


@pytest.fixture
def opened(tmp_path, monkeypatch):
    """A stand-in `xdg-open` first on PATH (no desktop here to open anything): it records its argument."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "opened.txt"
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{record}"\n')
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def lines(count: int) -> list[str]:
        assert wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= count, 10)
        return record.read_text().splitlines()

    return lines


def test_open_folder_log_and_failed_files_without_a_daemon(tmp_path, opened):
    inbox, state_dir = tmp_path / "in", tmp_path / "state"
    inbox.mkdir()
    bad = inbox / "会议.mp4"
    bad.write_bytes(b"not audio")
    with JobQueue.open(state_dir) as queue:
        queue.enqueue(bad, Fingerprint.of(bad), root=inbox)
        queue.fail(
            queue.claim("test"), "not an audio file (no audio stream)", ErrorKind.BAD_FILE, max_attempts=1
        )
    (state_dir / "svdaemon.log").write_text("log\n")
    config = load_config(None, {"state_dir": str(state_dir), "watch": [{"path": str(inbox)}]})
    from svdaemon.tray import fallback_of

    menu = build_menu(None, fallback_of(config))
    actions = Actions(state_dir, stop_tray=lambda: None, refresh=lambda: None)
    for entry in menu:
        if isinstance(entry, Item) and not isinstance(entry.action, Quit):
            actions.perform(entry.action)
    report = state_dir / "failed-files.txt"
    # Each action runs on a thread of its own, so the openers may start in any order.
    assert sorted(opened(3)) == sorted([str(inbox), str(state_dir / "svdaemon.log"), str(report)])
    assert report.read_text().splitlines()[2:] == [str(bad), "    not an audio file (no audio stream)"]


def svdaemon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "svdaemon.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
def test_menu_actions_drive_a_running_daemon(tmp_path, tiny_model_dir):
    inbox = tmp_path / "in"
    inbox.mkdir()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"model: {tiny_model_dir}\ndevice: cpu\nstate_dir: {tmp_path / 'state'}\nwatch:\n  - path: {inbox}\n"
    )
    config = load_config(config_path)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "svdaemon.cli", "run", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stopped = threading.Event()
    actions = Actions(config.state_dir, stop_tray=stopped.set, refresh=lambda: None)

    def view():
        return view_of(read_status(config.state_dir), Fallback((), ""))

    def menu() -> tuple:
        return view().menu

    try:
        assert wait_for(lambda: view().title == "svdaemon — idle · cpu", 120), "the daemon never became idle"
        pause = next(e for e in menu() if isinstance(e, Item) and e.text == "Pause")
        actions.perform(pause.action)
        assert read_status(config.state_dir).snapshot.pause_reason == "user"
        resume = next(e for e in menu() if isinstance(e, Item) and e.text == "Resume")
        actions.perform(resume.action)
        assert not read_status(config.state_dir).snapshot.paused
        (device,) = next(e for e in menu() if isinstance(e, Submenu) and e.text == "Device").entries
        assert device == RadioItem("CPU", SendCommand(Command("device", "cpu")), True)
        actions.perform(device.action)
        assert read_status(config.state_dir).snapshot.device == "cpu"
        actions.perform(menu()[-1].action)  # Quit svdaemon
        assert daemon.wait(timeout=30) == 0 and stopped.is_set()
        assert svdaemon("status", "--config", str(config_path)).returncode == 3
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()


def test_a_refused_command_is_logged_not_raised(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    refreshed = []
    actions = Actions(tmp_path, stop_tray=lambda: None, refresh=lambda: refreshed.append(1))
    actions.perform(SendCommand(Command("pause")))
    assert "no svdaemon is running" in caplog.text and refreshed == [1]
