"""The GPUs there are and how much memory each has free, read without disturbing them.

`torch.cuda.mem_get_info` creates a CUDA context (a few hundred MB) on every card it reads. Reading the
cards svdaemon does not use that way, once a second for the tray, would take memory from the games and
models it promises to stay out of the way of. Names and totals come from the device properties (no
context), free memory from NVML (`nvidia-ml-py`, matched by UUID, which survives CUDA_VISIBLE_DEVICES
and CUDA's device order); without NVML a card that svdaemon does not use shows no free figure.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from svdaemon.memory import MB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    name: str  # "cuda:0", as `device` and `svdaemon device NAME` take it
    label: str  # the card's name, "NVIDIA GeForce RTX 4090"
    total_mb: int
    uuid: str


@functools.cache
def visible_gpus() -> tuple[Gpu, ...]:
    """The CUDA devices this process sees, in CUDA's order; () without CUDA. Read once: cards do not come
    and go while a process runs."""
    import torch

    if not torch.cuda.is_available():
        return ()
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(
            Gpu(f"cuda:{index}", properties.name, properties.total_memory // MB, str(properties.uuid))
        )
    return tuple(gpus)


def free_mb(gpus: tuple[Gpu, ...]) -> dict[str, int]:
    """Free memory of each GPU NVML can read, by name; {} where NVML is missing (no driver library)."""
    if not gpus:
        return {}
    nvml = _nvml()
    if nvml is None:
        return {}
    free = {}
    for gpu in gpus:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(f"GPU-{gpu.uuid}".encode())
            free[gpu.name] = nvml.nvmlDeviceGetMemoryInfo(handle).free // MB
        except nvml.NVMLError as error:
            log.debug("NVML cannot read %s: %s", gpu.name, error)
    return free


@functools.cache
def _nvml():
    """The initialised pynvml module, or None (logged once) where it cannot be used."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # ImportError, or NVMLError_LibraryNotFound / DriverNotLoaded
        log.info("GPU free memory is read for svdaemon's own card only (NVML unavailable: %s)", error)
        return None
    return pynvml
