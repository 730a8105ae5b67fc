"""svdaemon's child processes import their parent's package, whatever folder they start in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from svdaemon import __version__
from svdaemon.child import python_code_command, python_module_command


def decoy_beside(folder: Path) -> Path:
    """A `svdaemon` folder where a child starts, as a clone in the home folder is for autostart."""
    decoy = folder / "svdaemon"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the svdaemon folder in the current folder')\n")
    return folder


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_module_child_started_beside_a_svdaemon_folder_imports_the_parents_package(tmp_path):
    home = decoy_beside(tmp_path)
    done = run(python_module_command("svdaemon.cli", "--version"), home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"svdaemon {__version__}"
    # How the tray was started before: the folder's own `svdaemon` wins, and the child dies.
    before = run([sys.executable, "-m", "svdaemon.cli", "--version"], home)
    assert before.returncode != 0 and "the svdaemon folder in the current folder" in before.stderr


def test_a_code_child_sees_the_parents_package(tmp_path):
    import svdaemon

    home = decoy_beside(tmp_path)
    done = run(python_code_command("import svdaemon; print(svdaemon.__file__)"), home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == svdaemon.__file__


def test_the_decode_process_starts_beside_a_svdaemon_folder(tmp_path, monkeypatch):
    """The daemon's decode children, started while the current folder holds a `svdaemon` folder."""
    import numpy as np

    from svdaemon.decoder import DecoderProcess

    from media import write_audio

    source = write_audio(tmp_path / "tone.wav", np.zeros(16000, dtype=np.float32), 16000)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(decoy_beside(home))
    with DecoderProcess(block_s=1.0) as decoder:
        assert sum(len(block) for block in decoder.blocks(source)) == 16000
