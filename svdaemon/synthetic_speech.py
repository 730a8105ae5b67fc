"""Real speech for tests and benchmarks, made with espeak-ng, with the true speech positions known exactly.

espeak-ng writes 22050 Hz mono 16-bit WAV with silence around each utterance; `speak` trims that silence so
an utterance's first and last samples are its true edges, and resamples to 16 kHz like the decoder's output.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchaudio

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
EDGE_LEVEL = 1e-3  # |sample| above this counts as the utterance; espeak's own silence is digital zero

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank",
    "Seven lazy owls were reading maps in the garden",
    "Many memories remain when morning comes again",
    "Please remember to bring the blue umbrella tomorrow",
    "Rain fell all night over the mountain villages",
    "Nobody knew where the old lighthouse keeper had gone",
    "We measured the water level every morning in May",
    "Lemon trees grow well in warm and sunny valleys",
    "Marvin wanted a bigger window in the living room",
    "Our neighbour plays the violin every Monday evening",
    "Eleven engineers reviewed the new bridge design",
    "A long line of yellow lanterns lit the narrow road",
    "Modern radios run for many hours on a single battery",
    "Lions rarely roam alone in the wide open meadow",
    "Warm bread and honey make a wonderful morning meal",
    "The museum will open a new gallery in November",
    "Winter evenings are long and remarkably quiet here",
    "My brother learned to ride a motorbike in one week",
    "The library lends more than a million volumes every year",
    "Our manager moved the meeting to Wednesday morning",
)


class SpeechTrack(NamedTuple):
    samples: np.ndarray  # 16 kHz mono float32
    speech: list[tuple[int, int]]  # [start, end) sample positions of each utterance, in order


@functools.cache
def speak(text: str) -> np.ndarray:
    """One utterance as 16 kHz float32, trimmed to its audible edges; cached (read-only) per text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "160", "-w", str(path), text], check=True)
        with wave.open(str(path), "rb") as wav:
            assert wav.getframerate() == ESPEAK_RATE and wav.getnchannels() == 1 and wav.getsampwidth() == 2
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    resampled = torchaudio.functional.resample(audio, ESPEAK_RATE, SAMPLE_RATE).numpy()
    audible = np.flatnonzero(np.abs(resampled) > EDGE_LEVEL)
    trimmed = np.ascontiguousarray(resampled[audible[0] : audible[-1] + 1], dtype=np.float32)
    trimmed.flags.writeable = False
    return trimmed


def build_track(pieces: Sequence[str | float], seed: int = 0, noise_dbfs: float | None = None) -> SpeechTrack:
    """Concatenate utterances (str) and silences (float seconds) in the order given.

    With `noise_dbfs`, white noise of that RMS level (from `seed`) is added everywhere, so silence is
    not digital zero; the true speech positions are those of the utterances either way.
    """
    parts: list[np.ndarray] = []
    speech: list[tuple[int, int]] = []
    position = 0
    for piece in pieces:
        part = speak(piece) if isinstance(piece, str) else np.zeros(round(piece * SAMPLE_RATE), np.float32)
        if isinstance(piece, str):
            speech.append((position, position + len(part)))
        parts.append(part)
        position += len(part)
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if noise_dbfs is not None:
        noise = np.random.default_rng(seed).standard_normal(len(samples)) * 10 ** (noise_dbfs / 20)
        samples = samples + noise.astype(np.float32)
    return SpeechTrack(samples.astype(np.float32), speech)


def make_speech_track(
    seconds: float, silence_fraction: float = 0.25, seed: int = 0, noise_dbfs: float | None = -60.0
) -> SpeechTrack:
    """`seconds` of varied sentences with about `silence_fraction` of silence, the same for the same seed.

    Sentences are drawn (from `seed`) while they fit into the speech share; the rest of the length is
    silence, split at random between the gaps before, between and after them. The track is exactly
    `seconds` long; one shorter than a sentence is silence only.
    """
    rng = np.random.default_rng(seed)
    total = round(seconds * SAMPLE_RATE)
    speech_budget = total * (1.0 - silence_fraction)
    texts: list[str] = []
    speech_length = 0
    while True:
        text = SENTENCES[rng.integers(len(SENTENCES))]
        if speech_length + len(speak(text)) > speech_budget:
            break
        texts.append(text)
        speech_length += len(speak(text))
    gap_shares = rng.dirichlet(np.ones(len(texts) + 1))
    gaps = np.diff(np.round(np.cumsum(np.concatenate([[0.0], gap_shares])) * (total - speech_length)))
    pieces: list[str | float] = [gaps[0] / SAMPLE_RATE]
    for text, gap in zip(texts, gaps[1:], strict=True):
        pieces += [text, gap / SAMPLE_RATE]
    return build_track(pieces, seed=seed, noise_dbfs=noise_dbfs)
