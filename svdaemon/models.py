"""Where the SenseVoice weights come from: a local folder, or a hub id fetched once into the hub's cache.

FunASR downloads on its own too, but it prints a failed download and goes on with whatever is there; so
svdaemon resolves the folder first, with the hub clients' own resumable, checksum-verified downloads, and
hands FunASR a complete local folder.
"""

from __future__ import annotations

import logging
import os
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


def _download(model: str, hub: str, offline: bool) -> Path:
    repo = hub_repo(model, hub)
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
            raise StartupError(
                f"model: {model} is not downloaded yet; run `svdaemon model fetch`"
            ) from cached_miss
    log.info(
        "downloading %s from %s (first use)",
        hub_repo(model, hub),
        "Hugging Face" if hub == "hf" else "ModelScope",
    )
    try:
        return _download(model, hub, offline=False)
    except Exception as exc:
        raise StartupError(
            f"model: {hub_repo(model, hub)} could not be downloaded from "
            f"{'Hugging Face' if hub == 'hf' else 'ModelScope'} ({exc.__class__.__name__}: {exc}); "
            "check the network, or set `model:` to a local folder"
        ) from exc
