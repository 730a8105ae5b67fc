"""Test doubles, sample values and helpers shared by several test files; each says what it stands for."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from svdaemon.control import Command, DaemonState, DeviceChoice, Reply, StatusSnapshot

SNAPSHOT = StatusSnapshot(
    state=DaemonState.WORKING,
    queue={"queued": 3, "running": 1, "done": 7, "failed": 1, "skipped": 0},
    current_file="/home/u/Transcribe/talk.mp4",
    progress=0.25,
    audio_done_s=15.0,
    audio_total_s=60.0,
    device="cuda:0",
    precision="fp16",
    vram_used_mb=1800,
    vram_total_mb=8192,
    paused=False,
    pause_reason=None,
    last_error="bad.mp3: not an audio file",
    pid=4242,
    started_at_s=1_700_000_000.5,
    version="0.1.0",
    vram_free_mb=5000,
    notice="fp16 on cuda:0 is unsafe for this model (non-finite logits, limit 0.05); running in fp32",
    devices=(
        DeviceChoice("cuda:0", "NVIDIA GeForce RTX 4070", free_mb=5000, total_mb=8192),
        DeviceChoice("cuda:1", "NVIDIA GeForce RTX 3090", free_mb=23000, total_mb=24576),
        DeviceChoice("cpu", "CPU"),
    ),
    watch=("/home/u/Transcribe", "/home/u/Lectures"),
    log_file="/home/u/.local/state/svdaemon/svdaemon.log",
)


class DaemonDouble:
    """Stands in for the daemon behind the control socket: a fixed snapshot, commands recorded."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def snapshot(self) -> StatusSnapshot:
        return SNAPSHOT

    def handle(self, command: Command) -> Reply:
        self.commands.append(command)
        return Reply(True, f"{command.name} done")


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def from_exited_process(expression: str) -> str:
    """`expression` from `svdaemon.owner`, evaluated in a process that has exited (and been reaped)."""
    script = f"from svdaemon.owner import *; print({expression})"
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return done.stdout.strip()
