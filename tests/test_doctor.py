"""`svdaemon doctor`: the versions that decide whether svdaemon works, and warnings outside the tested set.

The versions are the installed ones, read for real; only the warning test injects a tested-set table, since
an environment that is outside the lock on purpose cannot be installed for a test.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import av
import pytest
from packaging.requirements import Requirement

from svdaemon import doctor
from svdaemon.cli import main
from svdaemon.doctor import TRACKED, TestedSet, parse_tested_set, version_warnings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cpu_config(tiny_model_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"model: {tiny_model_dir}\ndevice: cpu\nwatch: []\nstate_dir: {tmp_path / 'state'}\n",
        encoding="utf-8",
    )
    return path


def test_doctor_names_python_and_every_tracked_version(cpu_config: Path, capsys) -> None:
    assert main(["doctor", "--config", str(cpu_config)]) == 0
    said = capsys.readouterr().out
    assert f"on Python {platform.python_version()}" in said
    for name in ("torch", "torchaudio", "funasr", "silero-vad"):
        assert f"{name} {metadata.version(name)}" in said
    assert f"PyAV {av.__version__}, FFmpeg {av.ffmpeg_version_info}, libavcodec " in said


def test_this_environment_is_the_tested_one(cpu_config: Path, capsys) -> None:
    """CI installs from the lock, so doctor must find nothing to warn about; a venv that drifted fails here."""
    tested = doctor.load_tested_set()
    assert tested is not None, "packaging/lock.txt is not found beside the package"
    assert version_warnings(platform.python_version(), doctor.installed_versions(), tested) == []
    assert main(["doctor", "--config", str(cpu_config)]) == 0
    said = capsys.readouterr().out
    assert "versions: as tested (" in said and "warning" not in said


def test_one_warning_line_per_version_outside_the_tested_set() -> None:
    installed = doctor.installed_versions()
    tested = TestedSet(
        pythons=("2.7",),
        versions={
            "torch": frozenset({"0.1"}),
            "av": frozenset({"1.0", "2.0"}),
            "funasr": frozenset({"0.0.1"}),
        },
        source="table",
    )
    lines = version_warnings(platform.python_version(), installed, tested)
    assert lines[0] == f"warning: Python {platform.python_version()} is not one svdaemon is tested on (2.7)"
    assert lines[1].startswith(
        f"warning: torch {installed['torch']} is outside the tested set (0.1 on Python"
    )
    assert lines[2].startswith(f"warning: funasr {installed['funasr']} is outside the tested set (0.0.1 on")
    assert lines[3].startswith(f"warning: av {installed['av']} is outside the tested set (1.0 or 2.0 on")
    assert len(lines) == 4  # torchaudio and silero-vad: no tested version in the table, nothing to say


def test_the_lock_line_whose_marker_holds_is_the_tested_one() -> None:
    lock = (
        "# comment\n"
        "av==17.1.0 ; python_full_version < '3.11'\n"
        "    # via svdaemon\n"
        "av==18.1.0 ; python_full_version == '3.11.*'\n"
        "Silero_VAD==6.2.3\n"
        "nvidia-cublas-cu12==12.8.4.1 ; platform_machine == 'x86_64'\n"
    )
    old = parse_tested_set(lock, "3.10 3.11", "lock", {"python_full_version": "3.10.13"})
    new = parse_tested_set(lock, "3.10 3.11", "lock", {"python_full_version": "3.11.7"})
    assert old.versions == {"av": {"17.1.0"}, "silero-vad": {"6.2.3"}}
    assert new.versions == {"av": {"18.1.0"}, "silero-vad": {"6.2.3"}}
    assert old.pythons == ("3.10", "3.11")


def test_the_lock_pins_every_tracked_package_inside_pyproject_ranges() -> None:
    """A lock left behind by a change of range would make setup.sh fail; this says so first."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ranges = {Requirement(text).name: Requirement(text).specifier for text in project["dependencies"]}
    lock = (REPO / "packaging" / "lock.txt").read_text(encoding="utf-8")
    pythons = (REPO / "packaging" / "pythons.txt").read_text(encoding="utf-8")
    for python in pythons.split():
        tested = parse_tested_set(lock, pythons, "lock", {"python_full_version": f"{python}.0"})
        for name in TRACKED:
            (version,) = tested.versions[name]
            assert version in ranges[name], f"{name} {version} (Python {python}) is outside {ranges[name]}"


def test_the_tested_set_ships_with_the_package() -> None:
    """pyproject lists lock.txt and pythons.txt as data of svdaemon.packaging, so a wheel's doctor has them."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    data = setuptools["package-data"]["svdaemon.packaging"]
    assert doctor.LOCK_NAME in data and doctor.PYTHONS_NAME in data
    assert doctor.packaging_dir() == REPO / "packaging"
