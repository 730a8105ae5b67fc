"""Model resolution with the real hub client, offline: a Hugging Face cache laid out as the client makes it.

No hub can be reached here, so downloading itself is not exercised; resolving a cached snapshot, the
ModelScope → Hugging Face name mapping, verification and the "not downloaded yet" paths are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svdaemon.models import hub_repo, is_local

pytestmark = pytest.mark.integration


def svdaemon(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "svdaemon.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.fixture
def hub_env(tmp_path: Path) -> dict[str, str]:
    """An isolated user: own config, state and an empty, offline Hugging Face cache."""
    config = tmp_path / "config.yaml"
    config.write_text(f"model_hub: hf\nstate_dir: {tmp_path / 'state'}\nwatch: []\n")
    return {
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "SVDAEMON_TEST_CONFIG": str(config),
    }


def cache_snapshot(cache: Path, repo: str, model_dir: Path) -> Path:
    """Place a model folder where huggingface_hub keeps a downloaded snapshot of `repo`."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    return snapshot


def test_hub_names():
    assert hub_repo("iic/SenseVoiceSmall", "ms") == "iic/SenseVoiceSmall"
    assert hub_repo("iic/SenseVoiceSmall", "hf") == "FunAudioLLM/SenseVoiceSmall"
    assert hub_repo("someone/Other", "hf") == "someone/Other"
    assert is_local("/models/SenseVoiceSmall") and not is_local("iic/SenseVoiceSmall")


def test_model_fetch_finds_and_verifies_a_cached_snapshot(hub_env, tiny_model_dir):
    snapshot = cache_snapshot(Path(hub_env["HF_HUB_CACHE"]), "FunAudioLLM/SenseVoiceSmall", tiny_model_dir)
    done = svdaemon("model", "fetch", "--config", hub_env["SVDAEMON_TEST_CONFIG"], env=hub_env)
    assert done.returncode == 0, done.stderr
    assert f"in {snapshot}" in done.stdout and "weights load from the checkpoint" in done.stdout


def test_model_fetch_offline_without_a_copy_is_a_startup_error(hub_env):
    done = svdaemon("model", "fetch", "--config", hub_env["SVDAEMON_TEST_CONFIG"], env=hub_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "FunAudioLLM/SenseVoiceSmall could not be downloaded from Hugging Face" in lines[0]
    assert "Traceback" not in done.stderr and len(lines) == 5
    assert f"config file: {hub_env['SVDAEMON_TEST_CONFIG']}" in lines[1] and "none yet" not in lines[1]


def test_a_first_run_without_network_says_what_to_do_and_makes_the_watch_folder(tmp_path):
    """The new user's case: no config file, the default model on ModelScope, no network (an endpoint on
    loopback that refuses), the default watch folder not there yet."""
    home = tmp_path / "home"
    env = {
        "HOME": str(home),
        "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9",
        "MODELSCOPE_CACHE": str(tmp_path / "ms"),
        "SVDAEMON_CONFIG": "",
        "XDG_CONFIG_HOME": "",
        "XDG_STATE_HOME": "",
        "DISPLAY": "",
    }
    done = svdaemon("run", env=env)
    assert done.returncode == 2
    said = done.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(said) if line.startswith("svdaemon: model: iic/SenseVoiceSmall"))
    advice = said[first:]
    assert "could not be downloaded from ModelScope" in advice[0] and "Traceback" not in done.stderr
    assert (
        advice[1]
        == f"  config file: {home}/.config/svdaemon/config.yaml (none yet: create it to change a setting)"
    )
    assert "`model_hub: hf`" in advice[2] and "`model: /path/to/that/folder`" in advice[3]
    assert "`svdaemon model fetch`" in advice[4] and len(advice) == 5
    assert (home / "Transcribe").is_dir()
    assert f"made the watch folder {home / 'Transcribe'}" in done.stderr


def test_doctor_reports_a_model_not_downloaded_yet(hub_env):
    done = svdaemon("doctor", "--config", hub_env["SVDAEMON_TEST_CONFIG"], env=hub_env)
    assert done.returncode == 0, done.stderr
    assert "iic/SenseVoiceSmall is not downloaded yet" in done.stdout
    assert "device: auto → cpu" in done.stdout or "device: auto → cuda:" in done.stdout
