"""The tray on a real (virtual) desktop: Xvfb, a private D-Bus session, Debian's `trayer` as the XEmbed tray
host and `dunst` as the notification service. The icon is found by its pixels in screenshots of the root
window, its menu is driven with a right click and the arrow keys (XTest), and the daemon is a real
`svdaemon run` on the tiny model; the docs screenshot is made here by its script."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svdaemon.config import load_config
from svdaemon.status_text import title
from svdaemon.synthetic_speech import build_track
from svdaemon.tray import read_status
from svdaemon.tray_icon import BADGE_FILL, GLYPH_COLOURS, TrayState

from doubles import wait_for
from make_tray_screenshot import PANEL_HEIGHT, VirtualDesktop, icon_centre, tray_process
from media import write_audio, write_random_bytes

MISSING = [
    tool for tool in ("Xvfb", "trayer", "dbus-daemon", "dunst", "dunstctl") if shutil.which(tool) is None
]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(MISSING), reason=f"needs {', '.join(MISSING)} (Debian: xvfb, trayer, dbus, dunst)"
    ),
]
SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "make_tray_screenshot.py"


def shows(desktop: VirtualDesktop, state: TrayState) -> bool:
    """The icon in `state` is docked in the panel at the top of the screen."""
    box = desktop.find(GLYPH_COLOURS[state])
    return box is not None and box[3] <= PANEL_HEIGHT


def choose_from_menu(desktop: VirtualDesktop, icon: tuple[int, int], *keys: str) -> None:
    """Right-click the icon, wait for its menu, then the keys (status lines are skipped: not clickable)."""
    desktop.click(*icon, button=3)
    assert wait_for(lambda: desktop.find((255, 255, 255), minimum=5000) is not None, 10), "no menu opened"
    desktop.press(*keys)


def test_the_icon_docks_its_menu_drives_the_daemon_and_it_notifies(tmp_path, tiny_model_dir):
    inbox = tmp_path / "in"
    inbox.mkdir()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"model: {tiny_model_dir}\ndevice: cpu\nstate_dir: {tmp_path / 'state'}\nsettle_s: 0.5\n"
        f"max_attempts: 1\ntray: off\nnotify: true\nwatch:\n  - path: {inbox}\n"
    )
    state_dir = load_config(config_path).state_dir
    with VirtualDesktop(tmp_path, notifications=True) as desktop:
        daemon = desktop.spawn(sys.executable, "-m", "svdaemon.cli", "run", "--config", str(config_path))
        idle = "svdaemon — idle · cpu"
        assert wait_for(lambda: title(read_status(state_dir).snapshot) == idle, 120), (
            "the daemon never became idle"
        )
        tray = tray_process(desktop, config_path)

        assert wait_for(lambda: shows(desktop, TrayState.IDLE), 20), "no idle icon docked in trayer"
        icon = icon_centre(desktop, GLYPH_COLOURS[TrayState.IDLE])
        choose_from_menu(desktop, icon, "Down", "Return")  # the first clickable item: Pause
        assert wait_for(lambda: shows(desktop, TrayState.PAUSED_BY_USER), 10), "the icon never showed paused"
        assert read_status(state_dir).snapshot.pause_reason == "user"
        choose_from_menu(desktop, icon, "Down", "Return")  # now Resume
        assert wait_for(lambda: shows(desktop, TrayState.IDLE), 10)

        write_random_bytes(tmp_path / "broken.wav")
        os.replace(tmp_path / "broken.wav", inbox / "broken.wav")
        speech = build_track([0.3, "The museum opens in November", 0.5]).samples
        write_audio(tmp_path / "talk.wav", speech, 16000)
        os.replace(tmp_path / "talk.wav", inbox / "talk.wav")
        assert wait_for(lambda: len(desktop.shown_notifications()) >= 2, 60), desktop.shown_notifications()
        summaries = {notice["summary"]: notice["body"] for notice in desktop.shown_notifications()}
        assert summaries["svdaemon: broken.wav failed"].startswith("broken.wav: ")
        assert summaries["svdaemon: all files done"].startswith("1 file(s) transcribed")

        choose_from_menu(desktop, icon, "Up", "Return")  # the last item: Quit svdaemon
        assert daemon.wait(timeout=30) == 0
        assert tray.wait(timeout=10) == 0


def test_without_daemon_or_notification_service_it_shows_not_running_and_stops_on_sigterm(tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"state_dir: {tmp_path / 'state'}\nwatch:\n  - path: {tmp_path}\n")
    with VirtualDesktop(tmp_path) as desktop:
        tray = tray_process(desktop, config_path)
        assert wait_for(lambda: shows(desktop, TrayState.NOT_RUNNING), 20), "no hollow ring docked in trayer"
        tray.send_signal(signal.SIGTERM)  # pystray's gtk stop() raises here: no notification service
        assert tray.wait(timeout=10) == 0


def test_the_docs_pictures_are_made_by_their_script(tmp_path):
    out, legend = tmp_path / "tray.png", tmp_path / "tray-states.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--legend", str(legend)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pixels = np.asarray(Image.open(out).convert("RGB"))
    working = np.all(pixels == GLYPH_COLOURS[TrayState.WORKING], axis=-1)
    badge = np.all(pixels == BADGE_FILL, axis=-1)
    white = np.all(pixels == 255, axis=-1)
    assert (
        working[:PANEL_HEIGHT].sum() > 20 and badge[:PANEL_HEIGHT].sum() > 5
    )  # the icon, docked, with its badge
    assert white.sum() > 20000  # the menu and its Device submenu
    states = np.asarray(Image.open(legend).convert("RGB"))
    for colour in GLYPH_COLOURS.values():
        assert np.all(states == colour, axis=-1).sum() > 100
