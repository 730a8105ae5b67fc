"""SenseVoice's input features for a whole batch at once, on the model's device.

FunASR's `WavFrontend` computes Kaldi fbank → LFR → CMVN one waveform at a time on the host; on a GPU that
loop, not the encoder, bounds the throughput for short segments. This module does the same arithmetic on a
padded batch (framing, DC removal, pre-emphasis, Hamming window, power spectrum, mel banks, log; 7 frames
stacked every 6; mean and scale from `am.mvn`) and is checked against the frontend to 1e-3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PREEMPHASIS = 0.97
SCALE = 1 << 15  # FunASR's frontend scales samples to 16-bit range before Kaldi's fbank


@dataclass(frozen=True)
class FrontendShape:
    """The frontend settings this batched version reproduces; others fall back to FunASR's frontend."""

    sample_rate: int
    window_samples: int
    shift_samples: int
    mel_bins: int
    lfr_m: int
    lfr_n: int

    @classmethod
    def of(cls, frontend) -> FrontendShape | None:
        """The shape of a FunASR `WavFrontend`, or None when it uses options not reproduced here."""
        reproducible = (
            type(frontend).__name__ == "WavFrontend"
            and frontend.window == "hamming"
            and frontend.snip_edges
            and frontend.upsacle_samples
            and frontend.dither == 0.0
            and frontend.cmvn is not None
        )
        if not reproducible:
            return None
        return cls(
            sample_rate=frontend.fs,
            window_samples=frontend.frame_length * frontend.fs // 1000,
            shift_samples=frontend.frame_shift * frontend.fs // 1000,
            mel_bins=frontend.n_mels,
            lfr_m=frontend.lfr_m,
            lfr_n=frontend.lfr_n,
        )


class BatchedFeatures:
    """Fbank + LFR + CMVN of many waveforms in one pass on `device`; same numbers as the frontend."""

    def __init__(self, shape: FrontendShape, cmvn, device: str) -> None:
        import torch
        from torchaudio.compliance.kaldi import get_mel_banks

        self.shape = shape
        self.device = device
        self._fft_size = 1 << (shape.window_samples - 1).bit_length()
        banks, _ = get_mel_banks(
            shape.mel_bins, self._fft_size, float(shape.sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0
        )
        self._mel = torch.nn.functional.pad(banks, (0, 1)).T.contiguous().to(device)
        self._window = torch.hamming_window(
            shape.window_samples, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32
        ).to(device)
        dim = shape.mel_bins * shape.lfr_m
        self._means = cmvn[0, :dim].to(device, torch.float32)
        self._scales = cmvn[1, :dim].to(device, torch.float32)
        self._epsilon = torch.tensor(torch.finfo(torch.float32).eps, device=device)

    def fbank_frames(self, num_samples: int) -> int:
        """Kaldi frames with snip_edges: whole windows only."""
        return 1 + (num_samples - self.shape.window_samples) // self.shape.shift_samples

    def __call__(self, waves: Sequence[np.ndarray]):
        """(features [B, T, mel·lfr_m] fp32 zero-padded, lengths [B] int32) for waveforms of ≥ one window."""
        import torch

        shape = self.shape
        lengths = [len(wave) for wave in waves]
        if min(lengths) < shape.window_samples:
            raise ValueError(f"a waveform shorter than one {shape.window_samples}-sample window")
        batch = torch.zeros(len(waves), max(lengths), dtype=torch.float32)
        for row, wave in enumerate(waves):
            batch[row, : len(wave)] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        batch = batch.to(self.device, non_blocking=True) * SCALE
        frames = batch.unfold(1, shape.window_samples, shape.shift_samples)  # [B, F, window]
        frames = frames - frames.mean(dim=2, keepdim=True)
        previous = torch.cat((frames[:, :, :1], frames[:, :, :-1]), dim=2)
        frames = (frames - PREEMPHASIS * previous) * self._window
        padded = torch.nn.functional.pad(frames, (0, self._fft_size - shape.window_samples))
        power = torch.fft.rfft(padded).abs().pow(2.0)
        fbank = torch.maximum(power @ self._mel, self._epsilon).log()  # [B, F, mel]
        return self._lfr_cmvn(fbank, [self.fbank_frames(n) for n in lengths])

    def _lfr_cmvn(self, fbank, fbank_lengths: list[int]):
        """Stack lfr_m frames every lfr_n (first and last frame repeated at the edges), then CMVN."""
        import torch

        m, n = self.shape.lfr_m, self.shape.lfr_n
        out_lengths = [-(-length // n) for length in fbank_lengths]
        steps = torch.arange(max(out_lengths), device=self.device)[:, None] * n
        offsets = torch.arange(m, device=self.device)[None, :] - (m - 1) // 2
        positions = (steps + offsets)[None]  # [1, T_lfr, m]
        last = torch.tensor(fbank_lengths, device=self.device)[:, None, None] - 1
        index = torch.minimum(positions.clamp(min=0), last)  # [B, T_lfr, m]
        rows = torch.arange(len(fbank_lengths), device=self.device)[:, None, None]
        stacked = fbank[rows, index].flatten(2)  # [B, T_lfr, m·mel]
        features = (stacked + self._means) * self._scales
        valid = (
            torch.arange(max(out_lengths), device=self.device)[None, :]
            < torch.tensor(out_lengths, device=self.device)[:, None]
        )
        features = features * valid[:, :, None]
        return features, torch.tensor(out_lengths, dtype=torch.int32, device=self.device)
