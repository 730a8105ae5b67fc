"""Where the SenseVoice weights come from: a local folder, or a hub id fetched once into the hub's cache.

FunASR downloads on its own too, but it prints a failed download and goes on with whatever is there; so
svdaemon resolves the folder first, with the hub clients' own resumable, checksum-verified downloads, and
hands FunASR a complete local folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from svdaemon.errors import StartupError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "iic/SenseVoiceSmall"
HF_EQUIVALENT = {"iic/SenseVoiceSmall": "FunAudioLLM/SenseVoiceSmall"}


def is_local(model: str) -> bool:
    """Config turns folders into absolute paths; anything else is a hub id."""
    return os.path.isabs(model)


def hub_repo(model: str, hub: str) -> str:
    """The repository id on the chosen hub (the ModelScope id has a different name on Hugging Face)."""
    return HF_EQUIVALENT.get(model, model) if hub == "hf" else model


class ModelUnavailable(StartupError):
    """A hub model that is neither in the hub's cache nor downloadable now; the CLI says what to do next."""


def _hub_name(hub: str) -> str:
    return "Hugging Face" if hub == "hf" else "ModelScope"


def _short_cause(error: BaseException, limit: int = 160) -> str:
    """The first line of an error, cut short: a network error's text runs to several hundred characters."""
    text = f"{error.__class__.__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _hub_loggers_quiet() -> Iterator[None]:
    """The hub clients log each retry as a warning on handlers of their own; svdaemon says the outcome once."""
    loggers = [logging.getLogger(name) for name in ("modelscope", "modelscope_hub", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _download(model: str, hub: str, offline: bool) -> Path:
    repo = hub_repo(model, hub)
    with _hub_loggers_quiet():
        if hub == "hf":
            from huggingface_hub import snapshot_download as hf_snapshot

            return Path(hf_snapshot(repo, local_files_only=offline))
        from modelscope.hub.snapshot_download import snapshot_download as ms_snapshot

        return Path(ms_snapshot(repo, local_files_only=offline))


def resolve_model_dir(model: str, hub: str, download: bool = True) -> Path:
    """A local folder holding the model: the folder itself, the hub cache, or a fresh download."""
    if is_local(model):
        return Path(model)
    try:
        return _download(model, hub, offline=True)
    except Exception as cached_miss:
        if not download:
            raise ModelUnavailable(f"model: {model} is not downloaded yet") from cached_miss
    log.info("downloading %s from %s (first use)", hub_repo(model, hub), _hub_name(hub))
    try:
        return _download(model, hub, offline=False)
    except Exception as exc:
        raise ModelUnavailable(
            f"model: {hub_repo(model, hub)} could not be downloaded from {_hub_name(hub)} ({_short_cause(exc)})"
        ) from exc
