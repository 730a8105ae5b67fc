"""CPU threads: VAD on one, the engine on its own count, the cores never oversubscribed by svdaemon itself."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch

from svdaemon.cpu_threads import (
    VAD_THREADS_BESIDE_ENGINE,
    engine_threads,
    prefer_passive_waits,
    torch_threads,
)
from svdaemon.synthetic_speech import build_track
from svdaemon.vad import ROW_WINDOWS, WARMUP_WINDOWS, WINDOW, VadNetwork, load_vad_model


@dataclass(frozen=True)
class Piece:
    start_s: float
    samples: np.ndarray


class ThreadsSeen:
    """Wraps a callable and notes torch's thread count on the calling thread at each call."""

    def __init__(self, call) -> None:
        self.call = call
        self.seen: set[int] = set()

    def __call__(self, *args, **kwargs):
        self.seen.add(torch.get_num_threads())
        return self.call(*args, **kwargs)


def test_the_engine_gets_the_cores_less_the_decode_processes_beside_it():
    assert engine_threads(None, cores=2) == 2  # transcribe: decode and VAD run in turn with the engine
    assert engine_threads(None, beside=1, cores=2) == 1  # the daemon on 2 cores: one decode process
    assert engine_threads(None, beside=4, cores=16) == 12
    assert engine_threads(None, beside=4, cores=2) == 1
    assert engine_threads(3, beside=1, cores=2) == 3  # --threads is the user's word


def test_vad_beside_the_engine_runs_on_its_own_thread_count_and_in_turn_on_the_caller_s():
    """The daemon's VAD runs on prefetch threads while the engine computes: on one thread of its own, it
    cannot oversubscribe the cores; `transcribe` runs it in turn with the engine, on the caller's count."""
    speech = build_track([0.3, "Rain fell all night", 0.3]).samples
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for threads, expected in ((VAD_THREADS_BESIDE_ENGINE, {1}), (None, {2})):
            network = VadNetwork(load_vad_model(), threads=threads)
            network._network = ThreadsSeen(network._network)
            rows = np.resize(speech, (2, network.context + (WARMUP_WINDOWS + ROW_WINDOWS) * WINDOW))
            network.score(rows.astype(np.float32), cold_first_row=True)
            assert network._network.seen == expected
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_the_engine_computes_on_its_own_count_whatever_the_thread_had(cpu_engine, monkeypatch):
    seen = ThreadsSeen(cpu_engine.recognize_raw)
    monkeypatch.setattr(cpu_engine, "recognize_raw", seen)
    monkeypatch.setattr(cpu_engine, "threads", 2)
    speech = build_track([0.3, "Rain fell all night", 0.3])
    previous = torch.get_num_threads()
    with torch_threads(1):  # as VAD leaves a thread it ran on
        cpu_engine.recognize([Piece(0.0, speech.samples)])
        assert seen.seen == {2} and torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous


def test_openmp_waits_passively_unless_the_user_chose_otherwise(monkeypatch):
    """Measured on 2 cores with one kept busy: spinning waits halve the full-size model's speed."""
    monkeypatch.delitem(sys.modules, "torch")  # as before torch loads: the policy can still take effect
    environ: dict[str, str] = {}
    assert prefer_passive_waits(environ) and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not prefer_passive_waits(chosen) and chosen == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_openmp_s_policy_is_left_alone_once_torch_is_loaded():
    environ: dict[str, str] = {}
    assert not prefer_passive_waits(environ) and environ == {}


def test_transcribe_and_run_set_it_before_torch_loads(tmp_path):
    """In a fresh interpreter, as the console script starts: the policy is in place when torch reads it."""
    probe = (
        "import os, sys; from svdaemon import cli; cli.main(sys.argv[1:]); "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [sys.executable, "-c", probe, "transcribe", str(tmp_path / "missing.wav")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.stdout.strip().splitlines()[-1] == "PASSIVE", done
