"""The fast commands: status, pause/resume/device, queue, retry, bump — real SQLite, real control socket.

No daemon exists yet to answer the socket (issue 4 builds it), so where one is needed the test serves the
real ControlServer with `DaemonDouble`, a stand-in for the daemon's state and command handling.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from svdaemon import cli
from svdaemon.control import Command, ControlServer
from svdaemon.fingerprint import Fingerprint
from svdaemon.jobs import ErrorKind, JobQueue, JobState
from svdaemon.owner import current_owner

from doubles import DaemonDouble

pytestmark = pytest.mark.integration


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nwatch: []\n")
    return path


@pytest.fixture
def svd(config_file: Path, capsys):
    def invoke(*args: str) -> tuple[int, str, str]:
        code = cli.main([*args[:1], "--config", str(config_file), *args[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def queue(tmp_path: Path):
    with JobQueue.open(tmp_path / "state") as opened:
        yield opened


def test_status_without_a_daemon_exits_3_with_the_queue_counts(svd, queue, tmp_path):
    queue.enqueue(tmp_path / "a.wav", Fingerprint(1, 1, 1))
    code, out, _ = svd("status")
    assert code == 3
    assert "not running" in out and "1 queued" in out
    code, out, _ = svd("status", "--json")
    assert code == 3 and json.loads(out) == {
        "running": False,
        "queue": {"queued": 1, "running": 0, "done": 0, "failed": 0, "skipped": 0},
    }


def test_status_and_commands_reach_the_running_daemon(svd, tmp_path):
    daemon = DaemonDouble()
    with ControlServer(tmp_path / "state", daemon.snapshot, daemon.handle):
        code, out, _ = svd("status")
        assert code == 0
        assert "working on cuda:0 (fp16)" in out and "/home/u/Transcribe/talk.mp4 25%" in out
        assert "VRAM: svdaemon 1800 MB; card 5000 MB free of 8192 MB" in out and "not an audio file" in out
        assert "note: fp16 on cuda:0 is unsafe" in out
        code, out, _ = svd("status", "--json")
        assert code == 0 and json.loads(out)["running"] is True
        assert [svd("pause")[0], svd("resume")[0], svd("device", "cuda:1")[0]] == [0, 0, 0]
    assert daemon.commands == [Command("pause"), Command("resume"), Command("device", "cuda:1")]
    assert svd("pause")[0] == 3


def test_queue_retry_and_bump(svd, queue, tmp_path):
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    for path in (good, bad):
        queue.enqueue(path, Fingerprint(1, 1, 1))
    job = queue.claim(current_owner())
    assert job is not None and job.path == good
    queue.fail(job, f"{good}: no audio stream", ErrorKind.BAD_FILE, max_attempts=1)

    code, out, _ = svd("queue", "--failed")
    assert code == 0 and out.splitlines()[1].startswith("failed") and "no audio stream" in out
    assert "bad.wav" not in out
    code, out, _ = svd("queue", "--json")
    assert {row["state"] for row in json.loads(out)} == {"failed", "queued"}

    code, _, err = svd("retry", str(good), str(tmp_path / "nope.wav"))
    assert code == 1 and "nope.wav is not in the queue" in err
    assert queue.get(good).state is JobState.QUEUED
    assert svd("bump", str(good))[0] == 0
    assert queue.claim(current_owner()).path == good
    assert svd("retry", "--all-failed")[1] == "0 failed job(s) queued again\n"


def test_fast_commands_never_import_torch(config_file):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "svdaemon.cli", "status", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "funasr" not in imported


def test_config_is_read_before_or_after_the_command_and_from_svdaemon_config(
    config_file, queue, tmp_path, capsys, monkeypatch
):
    queue.enqueue(tmp_path / "a.wav", Fingerprint(1, 1, 1))
    for argv in (["--config", str(config_file), "status"], ["status", "--config", str(config_file)]):
        assert cli.main(argv) == 3
        assert "1 queued" in capsys.readouterr().out, argv
    monkeypatch.setenv("SVDAEMON_CONFIG", str(config_file))
    assert cli.main(["status"]) == 3 and "1 queued" in capsys.readouterr().out
    monkeypatch.setenv("SVDAEMON_CONFIG", str(tmp_path / "missing.yaml"))
    assert cli.main(["status"]) == 2 and "missing.yaml: config file not found" in capsys.readouterr().err
    assert cli.main(["status", "--config", str(config_file)]) == 3  # the flag wins over the environment


def test_queue_has_a_header_and_bump_says_what_it_did_to_each_file(svd, queue, tmp_path):
    waiting, finished = tmp_path / "waiting.wav", tmp_path / "finished.wav"
    for path in (finished, waiting):
        queue.enqueue(path, Fingerprint(1, 1, 1))
    queue.finish(queue.claim(current_owner()))
    code, out, _ = svd("queue")
    assert code == 0 and out.splitlines()[0].split() == ["STATE", "TRIES", "FILE", "(NOTE)"]
    code, out, _ = svd("bump", str(waiting), str(finished))
    assert code == 0
    assert out.splitlines() == [
        f"moved to the front of the queue: {waiting}",
        f"done already, so not queued: {finished} (`svdaemon retry` queues it again)",
    ]
