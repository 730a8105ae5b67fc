"""GPU listing without disturbing the cards: CUDA's properties for names, NVML for free memory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from svdaemon.gpus import Gpu, free_mb, visible_gpus


def test_no_gpus_and_no_free_memory_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the gpu tests cover it")
    assert visible_gpus() == ()
    assert free_mb(()) == {}


def test_a_card_nvml_does_not_know_has_no_free_figure():
    """Without NVML (CI) or with it (a GPU machine), an unknown UUID reads as nothing, not an error."""
    stranger = Gpu("cuda:7", "nowhere", 1024, "00000000-0000-0000-0000-000000000000")
    assert free_mb((stranger,)) == {}


@pytest.mark.gpu
def test_listing_gpus_reads_every_card_without_a_cuda_context_on_any():
    script = (
        "import os, pynvml; from svdaemon.gpus import visible_gpus, free_mb; "
        "gpus = visible_gpus(); free = free_mb(gpus); "
        "assert gpus and set(free) == {g.name for g in gpus}, (gpus, free); "
        "pynvml.nvmlInit(); "
        "users = [p.pid for i in range(pynvml.nvmlDeviceGetCount()) "
        "for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))]; "
        "assert os.getpid() not in users, 'listing created a CUDA context'"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
