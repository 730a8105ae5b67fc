"""Test media written with PyAV from numpy signals, and broken files to go with them.

Plain functions (no pytest) shared by the audio tests and the pipeline tests. Signals are float32 in
[-1, 1], shaped (samples,) for mono or (channels, samples). The codec follows the file extension (see
AUDIO_CODECS); video containers also get a tiny video track so they look like real recordings.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

# Encoders the pip wheel of PyAV (FFmpeg 8) ships; chosen to cover the decoders users meet most.
AUDIO_CODECS = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
    ".ogg": "libopus",
    ".opus": "libopus",
    ".wma": "wmav2",
    ".mka": "flac",
    ".mp4": "aac",
    ".mov": "aac",
    ".mkv": "ac3",
    ".webm": "libopus",
    ".avi": "libmp3lame",
    ".ts": "mp2",
}
VIDEO_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx",
    ".avi": "mpeg4",
    ".ts": "libx264",
}
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 6: "5.1", 8: "7.1"}
_VIDEO_FPS = 4
_VIDEO_SIZE = 64
_CHUNK = 4096

# A title whose Latin-1 bytes are not UTF-8 (0xE9 "é" is a lead byte with no continuation byte after it).
LATIN1_TITLE = "Café Ñandú"


@dataclass(frozen=True)
class Track:
    """One audio track: the signal, its sample rate and an optional language tag ("eng", "jpn")."""

    samples: np.ndarray
    rate: int
    language: str | None = None


def tone(freq_hz: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """A sine of known frequency: (samples,) for mono, else the same sine on every channel."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    return wave if channels == 1 else np.tile(wave, (channels, 1))


def write_audio(path: Path, samples: np.ndarray, rate: int, language: str | None = None) -> Path:
    """One audio track, codec and container by extension."""
    return write_tracks(path, [Track(samples, rate, language)])


def write_tracks(
    path: Path,
    tracks: Sequence[Track],
    streamed: bool = False,
    title: str | None = None,
    video_s: float | None = None,
) -> Path:
    """Several audio tracks in one container, plus a tiny video track if the container is a video one.

    `streamed` writes through a pipe-like, unseekable file, as live recorders (browsers' MediaRecorder,
    screen capture) do: muxers that go back to store the duration (Matroska, WebM) then leave it out.
    `title` tags the file and every audio track. The video lasts `video_s` (a screen recording whose sound
    stopped early runs longer than its audio), else as long as the longest audio track. Packets are
    interleaved by the muxer, which holds up to 10 s of one stream waiting for the others.
    """
    seconds = max(_as_planar(track.samples).shape[1] / track.rate for track in tracks)
    with _output(path, streamed) as out:
        streams = [_add_audio(out, path, track.rate, _channels(track.samples)) for track in tracks]
        for stream, track in zip(streams, tracks, strict=True):
            if track.language:
                stream.metadata["language"] = track.language
            if title:
                stream.metadata["title"] = title
        if title:
            out.metadata["title"] = title
        video = _add_video(out, path) if path.suffix.lower() in VIDEO_CODECS else None
        out.start_encoding()  # the header, even for a track with no samples at all
        if video is not None:
            _write_video(out, video, seconds if video_s is None else video_s)
        for stream, track in zip(streams, tracks, strict=True):
            _encode_audio(out, stream, _chunks(_as_planar(track.samples)), track.rate)
    return path


def write_latin1_tagged(path: Path, tracks: Sequence[Track], title: str = LATIN1_TITLE) -> Path:
    """`write_tracks` with tags in Latin-1 where the container says UTF-8, as old taggers leave them.

    `title` tags the file and every audio track, and a track's language may be Latin-1 too ("qéq"). Each
    such tag is written as an ASCII stand-in of its length, whose bytes are then overwritten: the audio is
    exactly what `write_tracks` writes. Not for Ogg, whose pages carry checksums, nor ASF or MPEG-TS, whose
    muxers write tags in UTF-16 or not at all.
    """
    swaps: dict[bytes, bytes] = {}

    def stand_in(text: str) -> str:
        latin1 = text.encode("latin-1")
        if latin1.isascii():
            return text
        code = (f"q{chr(ord('a') + len(swaps))}" * len(latin1))[: len(latin1)]
        swaps[code.encode("ascii")] = latin1
        return code

    ascii_tracks = [replace(track, language=track.language and stand_in(track.language)) for track in tracks]
    write_tracks(path, ascii_tracks, title=stand_in(title))
    data = path.read_bytes()
    for code, latin1 in swaps.items():
        if code not in data:
            raise ValueError(f"{path}: the muxer did not store the tag {code!r} as written")
        data = data.replace(code, latin1)
    path.write_bytes(data)
    return path


def hide_track_durations(path: Path) -> Path:
    """Rename the per-track DURATION tags of a Matroska file FFmpeg wrote, leaving the segment's duration.

    As files from muxers that state no duration per track are, or whose tags sit at the end (mkvmerge) and
    were lost to a cut: only the container states a duration, its longest stream's.
    """
    data = path.read_bytes()
    if b"DURATION" not in data:
        raise ValueError(f"{path}: no DURATION tags")
    path.write_bytes(data.replace(b"DURATION", b"DURATIOX"))  # the same length: the file's layout holds
    return path


def write_long_tone(path: Path, seconds: float, rate: int, freq_hz: float = 440.0) -> Path:
    """A long mono tone written chunk by chunk, so making it never holds the whole signal."""

    def chunks() -> Iterator[np.ndarray]:
        total = round(seconds * rate)
        for start in range(0, total, rate):
            t = np.arange(start, min(start + rate, total)) / rate
            yield (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)[np.newaxis]

    with av.open(str(path), "w") as container:
        _encode_audio(container, _add_audio(container, path, rate, 1), chunks(), rate)
    return path


def write_spliced_mp3(folder: Path, seconds: float) -> Path:
    """Two MP3s back to back, as stream captures splice them: 44.1 kHz stereo at 440 Hz, then 22.05 kHz mono
    at 880 Hz, `seconds` each."""
    first = write_audio(folder / "first.mp3", tone(440.0, seconds, 44100, channels=2), 44100)
    second = write_audio(folder / "second.mp3", tone(880.0, seconds, 22050), 22050)
    spliced = folder / "spliced.mp3"
    spliced.write_bytes(first.read_bytes() + second.read_bytes())
    return spliced


def write_video_only(path: Path, seconds: float = 1.0) -> Path:
    """A video file with no audio stream."""
    with av.open(str(path), "w") as container:
        _write_video(container, _add_video(container, path), seconds)
    return path


def truncate(path: Path, fraction: float) -> Path:
    """Cut a file to `fraction` of its bytes, as an interrupted copy or download leaves it."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(int(size * fraction))
    return path


def scramble(path: Path, at_fraction: float, size: int = 2048, seed: int = 0) -> Path:
    """Overwrite `size` bytes at `at_fraction` of the file with noise: damage inside, headers intact."""
    start = int(path.stat().st_size * at_fraction)
    with path.open("r+b") as handle:
        handle.seek(start)
        handle.write(_noise(size, seed))
    return path


def scramble_mp4_payload(path: Path, seed: int = 0) -> Path:
    """Overwrite all media data of an MP4/M4A (its `mdat` box) with noise: it opens, but nothing decodes."""
    data = path.read_bytes()
    offset = 0
    while data[offset + 4 : offset + 8] != b"mdat":
        if offset >= len(data):
            raise ValueError(f"{path}: no mdat box")
        offset += int.from_bytes(data[offset : offset + 4], "big")
    size = int.from_bytes(data[offset : offset + 4], "big")
    with path.open("r+b") as handle:
        handle.seek(offset + 8)
        handle.write(_noise(size - 8, seed))
    return path


def write_random_bytes(path: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Noise with a media extension: not a media file at all."""
    path.write_bytes(_noise(size, seed))
    return path


def write_wav_unknown_codec(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A well-formed WAV whose format tag names no codec FFmpeg knows, so there is no decoder for it."""
    data = bytes(round(seconds * rate) * 2)
    fmt = (
        b"fmt "
        + (16).to_bytes(4, "little")
        + (0x7A7A).to_bytes(2, "little")  # unassigned WAVE format tag
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
    )
    body = b"WAVE" + fmt + b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    return path


@contextmanager
def _output(path: Path, streamed: bool) -> Iterator[av.container.OutputContainer]:
    if not streamed:
        with av.open(str(path), "w") as out:
            yield out
        return
    with path.open("wb") as file, av.open(_Unseekable(file), "w") as out:
        yield out


class _Unseekable(io.RawIOBase):
    """A write-only file that cannot seek, like a pipe."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self.name = file.name  # FFmpeg picks the muxer from the name

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._file.write(data)


def _noise(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _as_planar(samples: np.ndarray) -> np.ndarray:
    planar = samples[np.newaxis] if samples.ndim == 1 else samples
    return np.ascontiguousarray(planar, dtype=np.float32)


def _channels(samples: np.ndarray) -> int:
    return 1 if samples.ndim == 1 else samples.shape[0]


def _chunks(planar: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, planar.shape[1], _CHUNK):
        yield planar[:, start : start + _CHUNK]


def _add_audio(container: av.container.OutputContainer, path: Path, rate: int, channels: int):
    codec = av.Codec(AUDIO_CODECS[path.suffix.lower()], "w")
    rates = codec.audio_rates
    if rates and rate not in rates:
        rate = min((r for r in rates if r >= rate), default=max(rates))
    stream = container.add_stream(codec.name, rate=rate)
    stream.codec_context.layout = _LAYOUTS[channels]
    stream.codec_context.format = codec.audio_formats[0]
    stream.codec_context.bit_rate = 64000 * channels  # clean enough for speech; lossless codecs ignore it
    return stream


def _encode_audio(container, stream, chunks: Iterable[np.ndarray], rate: int) -> None:
    ctx = stream.codec_context
    resampler = av.AudioResampler(
        format=ctx.format, layout=ctx.layout, rate=ctx.sample_rate, frame_size=ctx.frame_size or None
    )
    offset = 0
    for chunk in chunks:
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=ctx.layout)
        frame.sample_rate = rate
        frame.pts = offset
        frame.time_base = Fraction(1, rate)
        offset += chunk.shape[1]
        for converted in resampler.resample(frame):
            container.mux(stream.encode(converted))
    for converted in resampler.resample(None):
        container.mux(stream.encode(converted))
    container.mux(stream.encode(None))


def _add_video(container: av.container.OutputContainer, path: Path):
    stream = container.add_stream(VIDEO_CODECS[path.suffix.lower()], rate=_VIDEO_FPS)
    stream.width = stream.height = _VIDEO_SIZE
    stream.pix_fmt = "yuv420p"
    return stream


def _write_video(container, stream, seconds: float) -> None:
    """Grey frames ending no later than `seconds`."""
    for index in range(max(1, math.floor(seconds * _VIDEO_FPS))):
        image = np.full((_VIDEO_SIZE, _VIDEO_SIZE, 3), (index * 37) % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
