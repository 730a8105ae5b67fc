"""`svdaemon doctor`: what this machine offers svdaemon, and whether the configured setup can start."""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

from svdaemon.config import Config, default_config_path
from svdaemon.errors import StartupError


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


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
            return f"model: {exc}", False
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

    lines = [
        f"svdaemon {_version('svdaemon')} on Python {platform.python_version()} ({platform.platform()})",
        f"config: {config_path or default_config_path()}",
        f"cores: {len(os.sched_getaffinity(0))}",
        f"torch {_version('torch')}, torchaudio {_version('torchaudio')}, funasr {_version('funasr')}, "
        f"silero-vad {_version('silero-vad')}",
        f"PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}",
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
