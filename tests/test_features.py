"""Batched features against FunASR's own `WavFrontend` (dither 0) on the tiny model's frontend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svdaemon.features import BatchedFeatures, FrontendShape
from svdaemon.synthetic_speech import build_track

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def frontend(cpu_engine):
    return cpu_engine.frontend


def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    speech = build_track([0.2, "Seven ships sailed at dawn", 0.3]).samples
    return [
        speech,
        np.zeros(16000, dtype=np.float32),  # digital silence: every mel energy at the log floor
        (rng.standard_normal(400) * 0.1).astype(np.float32),  # exactly one window
        (rng.standard_normal(16000 * 3 + 77) * 0.1).astype(np.float32),
        speech[:1000],
        np.clip(speech * 40, -1, 1),  # clipped loud speech
    ]


def test_batched_features_equal_the_frontend_per_waveform(frontend):
    shape = FrontendShape.of(frontend)
    assert shape is not None
    features, lengths = BatchedFeatures(shape, frontend.cmvn, "cpu")(waves())
    for row, wave in enumerate(waves()):
        expected, expected_length = frontend(torch.from_numpy(wave)[None], [len(wave)])
        assert int(lengths[row]) == int(expected_length[0])
        difference = (features[row, : lengths[row]] - expected[0]).abs().max()
        assert float(difference) <= 1e-3, (row, float(difference))
        assert not features[row, lengths[row] :].any()  # padding is zeros


def test_a_frontend_with_other_options_is_not_reproduced(frontend):
    frontend.dither = 1.0
    try:
        assert FrontendShape.of(frontend) is None
    finally:
        frontend.dither = 0.0


def test_a_waveform_shorter_than_one_window_is_refused(frontend):
    batched = BatchedFeatures(FrontendShape.of(frontend), frontend.cmvn, "cpu")
    with pytest.raises(ValueError, match="shorter than one 400-sample window"):
        batched([np.zeros(399, dtype=np.float32)])


@pytest.mark.gpu
def test_batched_features_on_cuda_equal_the_frontend_on_the_cpu(frontend):
    shape = FrontendShape.of(frontend)
    features, lengths = BatchedFeatures(shape, frontend.cmvn, "cuda")(waves())
    for row, wave in enumerate(waves()):
        expected, _ = frontend(torch.from_numpy(wave)[None], [len(wave)])
        assert float((features[row, : lengths[row]].cpu() - expected[0]).abs().max()) <= 1e-3
