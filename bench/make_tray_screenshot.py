"""Makes docs/tray.png: the svdaemon tray icon docked in a real tray, its menu open on the Device submenu.

    .venv/bin/python bench/make_tray_screenshot.py [--out docs/tray.png] [--legend docs/tray-states.png]

Everything runs privately: an X server (Xvfb), a D-Bus session bus and Debian's `trayer` as the XEmbed
tray host. The tray is the real `svdaemon tray` code in its own process, which picks the gtk backend here
by itself. The daemon is a stand-in: the real control server answering a staged status (a GPU at work,
three files queued), because the machine that builds the docs has no GPU to show. The menu is opened the
way a user does: a right click on the icon, then the arrow keys (sent through XTest). It also draws
docs/tray-states.png, every icon state with its meaning, for the README.

`tests/test_tray_desktop.py` runs this script and drives the real daemon with `VirtualDesktop`.
Needs: xvfb, trayer, dbus (dbus-daemon); dunst for `VirtualDesktop(notifications=True)`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageGrab

SCREEN = (1024, 600)
BACKGROUND = (58, 80, 107)  # the root window's colour: a plain desktop behind the panel
PANEL_HEIGHT = 32
START_TIMEOUT_S = 20.0
# A session bus without service activation: only the services a test starts are on it.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir={tmp}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    """The condition's first true value, polled every 0.05 s; RuntimeError naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_session_bus(work: Path) -> Iterator[str]:
    """A D-Bus session bus of our own, without service activation; yields its address."""
    config = work / "session-bus.conf"
    config.write_text(BUS_CONFIG.format(tmp=tempfile.gettempdir()))
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # as root it complains that it cannot raise its fd limit
        text=True,
    )
    try:
        assert bus.stdout is not None
        yield bus.stdout.readline().strip()
    finally:
        stop_process(bus)


class VirtualDesktop:
    """Xvfb + a private session bus + trayer (+ dunst): a desktop with an XEmbed tray, nobody else's."""

    def __init__(self, work: Path, notifications: bool = False) -> None:
        self.work = work
        self.notifications = notifications
        self.env: dict[str, str] = {}
        self.display = ""
        self._stack = contextlib.ExitStack()
        self._connection = None
        self._spawned = 0

    def __enter__(self) -> VirtualDesktop:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        self.display = self._start_x_server()
        address = self._stack.enter_context(private_session_bus(self.work))
        hidden = {"WAYLAND_DISPLAY", "XDG_CURRENT_DESKTOP", "XDG_SESSION_TYPE", "PYSTRAY_BACKEND"}
        self.env = {key: value for key, value in os.environ.items() if key not in hidden}
        self.env.update(DISPLAY=self.display, DBUS_SESSION_BUS_ADDRESS=address, NO_AT_BRIDGE="1")
        self._paint_background()
        self.spawn(
            "trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height",
            str(PANEL_HEIGHT), "--SetDockType", "true", "--transparent", "false", "--tint", "0xdddddd",
        )  # fmt: skip
        wait_until(self._tray_host_ready, START_TIMEOUT_S, "trayer to take the system tray")
        if self.notifications:
            config = self.work / "dunstrc"
            config.write_text("[global]\n    timeout = 0\n")
            self.spawn("dunst", "-config", str(config))
            wait_until(lambda: self._dunstctl("count", "displayed").returncode == 0, START_TIMEOUT_S, "dunst")

    def _start_x_server(self) -> str:
        read_end, write_end = os.pipe()
        width, height = SCREEN
        with os.fdopen(read_end) as ready:
            self.spawn(
                "Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp",
                pass_fds=(write_end,),
            )  # fmt: skip
            os.close(write_end)
            return f":{ready.readline().strip()}"

    def spawn(self, *command: str, **options) -> subprocess.Popen:
        """A process on this desktop, stopped when the desktop is; its output goes to a log in `work`."""
        self._spawned += 1
        log = self.work / f"{self._spawned:02d}-{Path(command[0]).name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, env=self.env or None, stdout=output, stderr=subprocess.STDOUT, **options
            )
        self._stack.callback(stop_process, process)
        return process

    def _x(self):
        """One X connection of our own, for XTest input and the root window."""
        if self._connection is None:
            from Xlib import display

            self._connection = display.Display(self.display)
            self._stack.callback(self._connection.close)
        return self._connection

    def _paint_background(self) -> None:
        connection = self._x()
        root = connection.screen().root
        red, green, blue = BACKGROUND
        root.change_attributes(background_pixel=(red << 16) | (green << 8) | blue)
        root.clear_area(0, 0, 0, 0)
        connection.sync()

    def _tray_host_ready(self) -> bool:
        connection = self._x()
        return connection.get_selection_owner(connection.intern_atom("_NET_SYSTEM_TRAY_S0")) != 0

    def screenshot(self) -> Image.Image:
        return ImageGrab.grab(xdisplay=self.display)

    def find(self, colour: tuple[int, int, int], minimum: int = 20) -> tuple[int, int, int, int] | None:
        """The bounding box of the pixels of exactly `colour`, when at least `minimum` are on screen."""
        pixels = np.asarray(self.screenshot().convert("RGB"))
        ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
        if len(xs) < minimum:
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def click(self, x: int, y: int, button: int = 1) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        connection = self._x()
        xtest.fake_input(connection, X.MotionNotify, x=x, y=y)
        xtest.fake_input(connection, X.ButtonPress, button)
        xtest.fake_input(connection, X.ButtonRelease, button)
        connection.sync()

    def press(self, *keys: str) -> None:
        """Keys by their X names (`Down`, `Return`), one after another."""
        from Xlib import XK, X
        from Xlib.ext import xtest

        connection = self._x()
        for key in keys:
            code = connection.keysym_to_keycode(XK.string_to_keysym(key))
            xtest.fake_input(connection, X.KeyPress, code)
            xtest.fake_input(connection, X.KeyRelease, code)
            connection.sync()
            time.sleep(0.2)  # a menu opens its submenu on a timer

    def shown_notifications(self) -> list[dict[str, str]]:
        """Summary and body of every notification dunst received (closing the ones on screen)."""
        self._dunstctl("close-all")
        history = json.loads(self._dunstctl("history").stdout)["data"][0]
        return [{"summary": entry["summary"]["data"], "body": entry["body"]["data"]} for entry in history]

    def _dunstctl(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dunstctl", *arguments], env=self.env, capture_output=True, text=True)


def tray_process(desktop: VirtualDesktop, config: Path) -> subprocess.Popen:
    return desktop.spawn(sys.executable, "-m", "svdaemon.cli", "tray", "--config", str(config))


def icon_centre(desktop: VirtualDesktop, colour: tuple[int, int, int]) -> tuple[int, int]:
    box = wait_until(lambda: desktop.find(colour), START_TIMEOUT_S, f"a tray icon in {colour}")
    left, top, right, bottom = box
    return (left + right) // 2, (top + bottom) // 2


def crop_to_content(image: Image.Image, margin: int = 24) -> Image.Image:
    """The panel and the open menus with a margin of desktop around them."""
    rgb = image.convert("RGB")
    box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, BACKGROUND)).getbbox()
    assert box is not None, "the screenshot shows nothing but the desktop"
    return rgb.crop((max(0, box[0] - margin), 0, rgb.width, min(rgb.height, box[3] + margin)))


def staged_snapshot(home: Path):
    """A GPU at work on the third of three files, as the README describes the tray."""
    from svdaemon.control import DaemonState, DeviceChoice, StatusSnapshot

    return StatusSnapshot(
        state=DaemonState.WORKING,
        queue={"queued": 2, "running": 1, "done": 41, "failed": 0, "skipped": 0},
        current_file=str(home / "Transcribe" / "lecture.mp4"),
        progress=0.41,
        audio_done_s=1476.0,
        audio_total_s=3600.0,
        device="cuda:0",
        precision="fp16",
        vram_used_mb=1843,
        vram_total_mb=24564,
        paused=False,
        pause_reason=None,
        last_error=None,
        pid=os.getpid(),
        started_at_s=time.time(),
        version="0.1.0",
        vram_free_mb=20790,
        devices=(
            DeviceChoice("cuda:0", "NVIDIA GeForce RTX 4090", free_mb=20790, total_mb=24564),
            DeviceChoice("cuda:1", "NVIDIA GeForce RTX 3060", free_mb=11020, total_mb=12288),
            DeviceChoice("cpu", "CPU"),
        ),
        watch=(str(home / "Transcribe"),),
        log_file=str(home / ".local/state/svdaemon/svdaemon.log"),
    )


def make_screenshot(out: Path, work: Path) -> Path:
    from svdaemon.control import ControlServer, Reply
    from svdaemon.tray_icon import GLYPH_COLOURS, TrayState

    state_dir = work / "state"
    config = work / "config.yaml"
    config.write_text(f"state_dir: {state_dir}\nwatch:\n  - path: {work}\n")
    snapshot = staged_snapshot(Path("/home/ada"))
    with (
        ControlServer(state_dir, lambda: snapshot, lambda command: Reply(True, "staged")),
        VirtualDesktop(work) as desktop,
    ):
        tray_process(desktop, config)
        x, y = icon_centre(desktop, GLYPH_COLOURS[TrayState.WORKING])
        time.sleep(1.0)  # the tooltip and menu follow the first status reading
        desktop.click(x, y, button=3)
        wait_until(lambda: desktop.find((255, 255, 255), minimum=5000), START_TIMEOUT_S, "the menu")
        desktop.press("Down", "Down", "Right")
        time.sleep(0.5)
        image = crop_to_content(desktop.screenshot())
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


LEGEND = (
    ("idle", "IDLE", 0, False),
    ("working (GPU)", "WORKING", 3, False),
    ("working on CPU", "ON_CPU", 42, False),
    ("paused by you", "PAUSED_BY_USER", 120, False),
    ("waiting for VRAM", "YIELDING_VRAM", 7, False),
    ("cannot go on", "ERROR", 5, True),
    ("not running", "NOT_RUNNING", 0, False),
)


def make_legend(out: Path) -> Path:
    """Every icon state at 64 px with its meaning (badge: files to do; red dot: some failed)."""
    from PIL import ImageDraw, ImageFont

    from svdaemon.tray_icon import IconLook, TrayState, draw_icon

    cell, font = 128, ImageFont.load_default(size=14)
    image = Image.new("RGB", (cell * len(LEGEND), 112), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for index, (label, state, pending, failed) in enumerate(LEGEND):
        icon = draw_icon(IconLook(TrayState[state], pending, failed))
        image.paste(icon, (index * cell + (cell - icon.width) // 2, 12), icon)
        draw.text((index * cell + cell // 2, 96), label, fill=(32, 33, 36), font=font, anchor="mm")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    docs = Path(__file__).resolve().parent.parent / "docs"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=docs / "tray.png")
    parser.add_argument("--legend", type=Path, default=docs / "tray-states.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="svdaemon-tray-") as work:
        print(f"wrote {make_screenshot(args.out, Path(work))}")
    print(f"wrote {make_legend(args.legend)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
