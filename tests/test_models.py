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
    assert "FunAudioLLM/SenseVoiceSmall could not be downloaded from Hugging Face" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_doctor_reports_a_model_not_downloaded_yet(hub_env):
    done = svdaemon("doctor", "--config", hub_env["SVDAEMON_TEST_CONFIG"], env=hub_env)
    assert done.returncode == 0, done.stderr
    assert "iic/SenseVoiceSmall is not downloaded yet" in done.stdout
    assert "device: auto → cpu" in done.stdout or "device: auto → cuda:" in done.stdout
