"""CPU threads: VAD on one, the engine on its own count, the cores never oversubscribed by svdaemon itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from svdaemon.cpu_threads import VAD_THREADS_BESIDE_ENGINE, engine_threads, torch_threads
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
