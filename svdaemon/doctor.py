"""`svdaemon doctor`: what this machine offers svdaemon, and whether the configured setup can start.

It also compares the versions of the packages that decide whether svdaemon works (torch, torchaudio,
funasr, PyAV, silero-vad) and of Python with the tested set: the lock that CI ran the tests on
(packaging/lock.txt, shipped inside the package), its lines for the running Python and platform. A version
outside it is one line of warning, not a failure: it may well work, but nobody has seen it do so.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import svdaemon
from svdaemon.config import Config, default_config_path
from svdaemon.errors import StartupError

log = logging.getLogger(__name__)

# The packages whose version decides whether svdaemon works, in the order the report names them.
TRACKED = ("torch", "torchaudio", "funasr", "av", "silero-vad")
LOCK_NAME, PYTHONS_NAME = "lock.txt", "pythons.txt"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---- the tested set ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestedSet:
    """What CI tested for one Python and platform: the supported Pythons and each tracked package's version.

    A package may have more than one version only in a hand-made table; the lock gives one per environment.
    """

    pythons: tuple[str, ...]  # "3.10", "3.11", ...
    versions: Mapping[str, frozenset[str]]
    source: str  # where it was read, for the warning lines

    __test__ = False  # a dataclass named Test... is not a pytest test class


def packaging_dir() -> Path | None:
    """A wheel carries packaging/ as svdaemon/packaging/; an editable install or a source checkout run with
    PYTHONPATH has it beside the package."""
    here = Path(__file__).parent
    for folder in (here / "packaging", here.parent / "packaging"):
        if (folder / LOCK_NAME).is_file():
            return folder
    return None


def parse_tested_set(
    lock_text: str, pythons_text: str, source: str, environment: Mapping[str, str] | None = None
) -> TestedSet:
    """The tracked packages' pins of a lock (`name==version ; marker` lines, as uv writes them) whose markers
    hold in `environment` (default: this interpreter's)."""
    from packaging.markers import Marker

    versions: dict[str, set[str]] = {}
    for line in lock_text.splitlines():
        requirement, _, marker = line.partition(";")
        name, equals, version = requirement.strip().partition("==")
        if not equals or line[:1].isspace() or line.startswith("#"):
            continue
        name = _normalise(name)
        if name in TRACKED and (not marker.strip() or Marker(marker.strip()).evaluate(environment)):
            versions.setdefault(name, set()).add(version.strip())
    pythons = tuple(pythons_text.split())
    return TestedSet(pythons, {name: frozenset(found) for name, found in versions.items()}, source)


def load_tested_set() -> TestedSet | None:
    """The tested set shipped with this svdaemon; None (and a log line saying why) when it cannot be read."""
    folder = packaging_dir()
    if folder is None:
        log.info("no %s beside %s: the tested versions are unknown", LOCK_NAME, Path(__file__).parent)
        return None
    try:
        return parse_tested_set(
            (folder / LOCK_NAME).read_text(encoding="utf-8"),
            (folder / PYTHONS_NAME).read_text(encoding="utf-8"),
            str(folder / LOCK_NAME),
        )
    except (OSError, ImportError, ValueError) as exc:  # packaging missing, a marker it cannot read
        log.info("the tested versions in %s cannot be read: %s", folder / LOCK_NAME, exc)
        return None


def installed_versions() -> dict[str, str | None]:
    """The installed version of each tracked package (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for name in TRACKED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def version_warnings(python: str, installed: Mapping[str, str | None], tested: TestedSet) -> list[str]:
    """One line for Python outside the supported versions and one per package outside the tested set."""
    lines = []
    minor = ".".join(python.split(".")[:2])
    if minor not in tested.pythons:
        lines.append(
            f"warning: Python {python} is not one svdaemon is tested on ({', '.join(tested.pythons)})"
        )
    for name in TRACKED:
        have, want = installed.get(name), tested.versions.get(name, frozenset())
        if have is None:
            lines.append(f"warning: {name} is not installed (tested: {_either(want)})")
        elif want and have not in want:
            lines.append(
                f"warning: {name} {have} is outside the tested set ({_either(want)} on Python {minor}, "
                f"{tested.source}); `bash packaging/setup.sh` installs the tested versions"
            )
    return lines


def _tested_lines() -> list[str]:
    tested = load_tested_set()
    if tested is None:
        return ["tested versions: unknown (packaging/lock.txt is not with this svdaemon)"]
    warnings = version_warnings(platform.python_version(), installed_versions(), tested)
    return warnings or [f"versions: as tested ({tested.source}, Python {platform.python_version()})"]


def _either(versions: frozenset[str]) -> str:
    return " or ".join(sorted(versions)) or "none"


def _normalise(name: str) -> str:
    """PEP 503: silero_vad, Silero.VAD and silero-vad are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- the machine -------------------------------------------------------------------------------------------


def _ffmpeg_text(av) -> str:
    """FFmpeg's release as PyAV reports it (PyAV 17 and later), and the libavcodec it was built with."""
    codec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    release = getattr(av, "ffmpeg_version_info", None)
    return f"FFmpeg {release}, libavcodec {codec}" if release else f"FFmpeg libavcodec {codec}"


def _gpu_lines() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return [f"CUDA: not available (torch built with CUDA {torch.version.cuda or 'none'})"]
    lines = [f"CUDA: {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"]
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        lines.append(
            f"  cuda:{index}  {torch.cuda.get_device_name(index)}  "
            f"{free / 2**20:,.0f} MiB free of {total / 2**20:,.0f} MiB"
        )
    return lines


def _model_line(config: Config) -> tuple[str, bool]:
    """A hub model not downloaded yet is fine (first use fetches it); a broken local folder is not."""
    from svdaemon.engine import check_model_dir
    from svdaemon.models import is_local, resolve_model_dir

    try:
        directory = resolve_model_dir(config.model, config.model_hub, download=False)
        check_model_dir(directory)
    except StartupError as exc:
        if is_local(config.model):
            return f"model: {str(exc).removeprefix('model: ')}", False  # some errors name the key already
        return (
            f"model: {config.model} is not downloaded yet; first use fetches it (or `svdaemon model fetch`)",
            True,
        )
    return f"model: {config.model} → {directory}", True


def report(config: Config, config_path: Path | None) -> tuple[list[str], bool]:
    """Lines to print, and whether svdaemon can start with this configuration."""
    import av

    from svdaemon.engine import resolve_device
    from svdaemon.tray import describe_backend

    # svdaemon.__version__, not its metadata: a checkout run with PYTHONPATH has none.
    lines = [
        f"svdaemon {svdaemon.__version__} on Python {platform.python_version()} ({platform.platform()})",
        f"config: {config_path or default_config_path()}",
        f"cores: {len(os.sched_getaffinity(0))}",
        f"torch {_version('torch')}, torchaudio {_version('torchaudio')}, funasr {_version('funasr')}, "
        f"silero-vad {_version('silero-vad')}",
        f"PyAV {av.__version__}, {_ffmpeg_text(av)}",
        *_tested_lines(),
        f"espeak-ng (tests and bench only): {shutil.which('espeak-ng') or 'not found'}",
    ]
    lines.extend(_gpu_lines())
    healthy = True
    try:
        lines.append(f"device: {config.device} → {resolve_device(config.device)}")
    except StartupError as exc:
        lines.append(f"device: {exc}")
        healthy = False
    model_line, model_ok = _model_line(config)
    lines.append(model_line)
    healthy = healthy and model_ok
    lines.append(f"state: {config.state_dir}")
    lines.append(describe_backend())
    return lines, healthy
