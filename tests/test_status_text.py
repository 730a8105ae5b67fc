"""The words `svdaemon status`, the tray and systemd's status line share."""

from __future__ import annotations

import dataclasses

from svdaemon.config import Config
from svdaemon.daemon import Daemon
from svdaemon.jobs import JobQueue
from svdaemon.status_text import device_precision_text, queue_text, title, to_do_text

from doubles import DaemonDouble

CLAIMED_AHEAD = {"queued": 0, "running": 3, "done": 5, "failed": 1, "skipped": 0}


def test_the_tray_and_status_count_the_files_to_do_alike():
    """The worker claims files ahead, so they are `running` in the queue: "3 queued" in the tray beside
    "0 queued, 3 running" in `status` was a contradiction."""
    assert queue_text(CLAIMED_AHEAD) == "3 to do (0 queued, 3 running), 5 done, 1 failed, 0 skipped"
    shown = title(dataclasses.replace(DaemonDouble().snapshot(), queue=CLAIMED_AHEAD))
    assert f"— {to_do_text(CLAIMED_AHEAD)} ·" in shown and "queued" not in shown
    assert to_do_text({"queued": 0, "running": 0}) == "nothing to do"


def test_a_daemon_loading_on_the_cpu_says_fp32_and_auto_says_no_precision_yet(tmp_path):
    with JobQueue.open(tmp_path) as queue:
        for device, shown in (("cpu", "cpu (fp32)"), ("auto", "auto"), ("cuda:1", "cuda:1 (fp16)")):
            daemon = Daemon(Config(state_dir=tmp_path, device=device, precision="fp16"), None)
            daemon.queue = queue
            snapshot = daemon.snapshot()
            assert device_precision_text(snapshot.device, snapshot.precision) == shown
    assert device_precision_text("cpu", "bf16") == "cpu (bf16)"
