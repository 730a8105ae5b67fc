"""Packages that must stay light import nothing heavy, checked in a fresh interpreter each."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "funasr", "PIL", "pystray")


@pytest.mark.parametrize("module", ["svdaemon.audio", "svdaemon.decoder", "svdaemon.decoder_pool"])
def test_the_decode_side_imports_no_model_and_no_gui(module):
    """Decoding (and its pool, which leases decoders by the `Decoder` protocol) knows nothing of models."""
    probe = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"{module} brought in {done.stdout.strip()}"


def test_the_daemon_imports_nothing_of_the_desktop():
    """The daemon says its title to systemd through `status_text`; the tray's drawing and menu stay its own."""
    desktop = ("svdaemon.tray", "svdaemon.tray_icon", "svdaemon.tray_menu", "svdaemon.notifications")
    probe = f"import sys, svdaemon.daemon; print(' '.join(m for m in {desktop + HEAVY[2:]!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"svdaemon.daemon brought in {done.stdout.strip()}"
