"""Decode any audio or video file PyAV opens to 16 kHz mono float32, streamed in fixed-size blocks.

Memory stays bounded whatever the duration: frames are decoded, resampled and copied into one block at a
time, and a block is handed on as soon as it is full. Channels are averaged in numpy rather than by
FFmpeg's downmix, whose default for stereo to mono is (L + R) / sqrt(2): +3 dB on speech recorded alike on
both channels, and past full scale when both are loud.

Error rule: every problem found before the first sample (missing, unreadable or empty file, not media, no
audio stream, no decoder, data that never decodes, no samples at all) raises DecodeError, and `probe`
finds each of them up front. After audio has come out, data errors never raise: an undecodable packet is
skipped and counted, a demuxer that gives up ends the stream, and a warning says what was lost (a file
that ends well before the duration its header states is reported the same way, as truncated). Only a
failure of the operating system to read the file raises mid-stream, since the rest of it is unknowable.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from svdaemon.errors import DecodeError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# ISO 639-1 codes of the languages SenseVoice speaks, with their ISO 639-2 spellings found in containers.
_ISO_639_2 = {"zh": ("zho", "chi"), "en": ("eng",), "ja": ("jpn",), "ko": ("kor",), "yue": ()}

# A file whose audio ends this much before its stated duration is reported as truncated.
_SHORTFALL_S = 1.0
_SHORTFALL_FRACTION = 0.02


@dataclass(frozen=True)
class AudioInfo:
    """What `probe` learned about the audio stream that `decode_blocks` will read."""

    path: Path
    duration_s: float
    stream_index: int
    codec: str
    channels: int
    sample_rate: int
    language: str | None


def probe(path: Path, audio_language: str | None = None) -> AudioInfo:
    """Describe the audio stream `decode_blocks` would pick, raising its open-time errors up front.

    Reads the container's metadata and decodes only the first audio frame, which proves the stream
    decodes. When neither the stream nor the container states a duration (e.g. a webm written live by a
    browser), the packets are read to their end, without decoding, to measure it.
    """
    with _open(path) as container:
        stream = _select_stream(container, path, audio_language)
        first = next(_frames(container, stream, path))
        stated_s = _stated_duration_s(container, stream)
        info = AudioInfo(
            path=path,
            duration_s=stated_s or 0.0,  # measured below when no header states it
            stream_index=stream.index,
            codec=stream.codec_context.name,
            channels=first.layout.nb_channels,
            sample_rate=first.sample_rate,
            language=stream.metadata.get("language"),
        )
    return info if stated_s else replace(info, duration_s=_scanned_duration_s(path, info.stream_index))


def decode_blocks(
    path: Path, block_s: float = 30.0, audio_language: str | None = None
) -> Iterator[np.ndarray]:
    """Yield the audio as 1-D float32 arrays of exactly `block_s` seconds at 16 kHz; the last may be shorter.

    Samples are not clipped: full scale is 1.0, and lossy decoders may overshoot it slightly.
    A generator: open-time errors are raised by the first `next()` (see the module's error rule).
    """
    block_len = round(block_s * SAMPLE_RATE)
    if block_len <= 0:
        raise ValueError(f"block_s must be positive, got {block_s}")
    with _open(path) as container:
        stream = _select_stream(container, path, audio_language)
        frames = _frames(container, stream, path, _stated_duration_s(container, stream))
        block = np.empty(block_len, dtype=np.float32)
        filled = 0
        for chunk in _mono_16k(frames):
            while chunk.size:
                taken = min(block_len - filled, chunk.size)
                block[filled : filled + taken] = chunk[:taken]
                filled += taken
                chunk = chunk[taken:]
                if filled == block_len:
                    yield block
                    block = np.empty(block_len, dtype=np.float32)
                    filled = 0
        if filled:
            yield block[:filled]


def _frames(
    container: av.container.InputContainer, stream, path: Path, stated_s: float | None = None
) -> Iterator[av.AudioFrame]:
    """The decoded frames of one stream, applying the module's error rule as they come."""
    decoded_s = 0.0
    skipped = 0
    first_error: str | None = None
    stopped: str | None = None
    packets = container.demux(stream)
    while stopped is None:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as error:
            if isinstance(error, OSError):
                raise DecodeError(f"{path}: read error at {decoded_s:.1f} s ({_cause(error)})") from error
            stopped = first_error = first_error or _cause(error)
            packet = None  # flush what the decoder still holds
        try:
            frames = stream.codec_context.decode(packet)
        except av.error.FFmpegError as error:
            skipped += 1
            first_error = first_error or _cause(error)
            continue
        for frame in frames:
            if frame.samples:
                decoded_s += frame.samples / frame.sample_rate
                yield frame
    if not decoded_s:
        cause = f"corrupt data ({first_error})" if first_error else "zero duration (no audio samples)"
        raise DecodeError(f"{path}: {cause}")
    _report_losses(path, decoded_s, stated_s, stopped, skipped, first_error)


def _report_losses(
    path: Path,
    decoded_s: float,
    stated_s: float | None,
    stopped: str | None,
    skipped: int,
    first_error: str | None,
) -> None:
    """Warn, in one line, about audio that did not decode: the transcript will be partial."""
    losses = []
    if stopped:
        losses.append(f"decoding stopped at {decoded_s:.1f} s ({stopped})")
    elif stated_s and stated_s - decoded_s > max(_SHORTFALL_S, _SHORTFALL_FRACTION * stated_s):
        losses.append(f"decoding stopped at {decoded_s:.1f} s of the {stated_s:.1f} s the file states")
    if skipped:
        losses.append(f"skipped {skipped} undecodable packet(s) ({first_error})")
    if losses:
        logger.warning("%s: %s; kept what decoded (truncated or damaged file?)", path, ", ".join(losses))


def _open(path: Path) -> av.container.InputContainer:
    """Open `path` for demuxing, turning every way that can fail into a DecodeError naming the cause."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise DecodeError(f"{path}: no such file") from None
    except PermissionError:
        raise DecodeError(f"{path}: permission denied") from None
    except OSError as error:
        raise DecodeError(f"{path}: cannot read ({_cause(error)})") from error
    if stat.S_ISDIR(status.st_mode):
        raise DecodeError(f"{path}: is a directory")
    if not stat.S_ISREG(status.st_mode):
        raise DecodeError(f"{path}: not a regular file")  # a FIFO or device would block or never end
    if status.st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        # Absolute, so FFmpeg never reads a name like "take:2.mp3" as a "take:" protocol URL.
        return av.open(os.fspath(path.absolute()), metadata_errors="replace")
    except PermissionError:
        raise DecodeError(f"{path}: permission denied") from None
    except av.error.InvalidDataError:
        raise DecodeError(f"{path}: not a media file (unknown format, or damaged headers)") from None
    except (av.error.FFmpegError, OSError) as error:
        raise DecodeError(f"{path}: cannot open ({_cause(error)})") from error


def _select_stream(container: av.container.InputContainer, path: Path, audio_language: str | None):
    """The audio stream tagged `audio_language`, else the container's default audio stream."""
    streams = container.streams.audio
    if not streams:
        raise DecodeError(f"{path}: no audio stream")
    chosen = container.streams.best("audio") or streams[0]
    if audio_language:
        wanted = _language_codes(audio_language)
        tags = [stream.metadata.get("language") for stream in streams]
        matches = [s for s, tag in zip(streams, tags, strict=True) if tag and _language_codes(tag) & wanted]
        if matches:
            chosen = matches[0]
        else:
            logger.warning(
                "%s: no audio track in language %r (tracks: %s); using track #%d",
                path,
                audio_language,
                ", ".join(tag or "untagged" for tag in tags),
                chosen.index,
            )
    if chosen.codec_context is None:
        raise DecodeError(f"{path}: unsupported codec (no decoder for audio stream #{chosen.index})")
    return chosen


def _language_codes(tag: str) -> frozenset[str]:
    """The spellings of one language that count as equal: "ja" and "jpn", "zh", "zho" and "chi"."""
    code = tag.strip().lower().replace("_", "-").split("-")[0]
    for short, long_forms in _ISO_639_2.items():
        if code == short or code in long_forms:
            return frozenset((short, *long_forms))
    return frozenset((code,))


def _mono_16k(frames: Iterable[av.AudioFrame]) -> Iterator[np.ndarray]:
    """Resample to 16 kHz float and average the channels; a new resampler when the source format changes."""
    resampler = None
    source = None
    for frame in frames:
        if (frame.format.name, frame.layout.name, frame.sample_rate) != source:
            if resampler is not None:
                yield from _averaged(resampler.resample(None))
            # Packed, not planar: PyAV 18 crashes converting planar audio of 8 channels (7.1) to arrays.
            resampler = av.AudioResampler(format="flt", rate=SAMPLE_RATE)
            source = (frame.format.name, frame.layout.name, frame.sample_rate)
        yield from _averaged(resampler.resample(frame))
    if resampler is not None:
        yield from _averaged(resampler.resample(None))


def _averaged(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        interleaved = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
        yield interleaved[:, 0] if interleaved.shape[1] == 1 else interleaved.mean(axis=1, dtype=np.float32)


def _stated_duration_s(container: av.container.InputContainer, stream) -> float | None:
    """The audio stream's duration from the headers (the container's when the stream states none)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _scanned_duration_s(path: Path, stream_index: int) -> float:
    """Measure a stream that states no duration by its packet times: reads the whole file, decodes nothing."""
    with _open(path) as container:
        stream = container.streams[stream_index]
        start = end = None
        for packet in container.demux(stream):
            if packet.pts is not None:
                start = packet.pts if start is None else min(start, packet.pts)
                end = max(packet.pts + (packet.duration or 0), packet.pts if end is None else end)
        return float((end - start) * stream.time_base) if start is not None else 0.0


def _cause(error: BaseException) -> str:
    """The reason in an OS or FFmpeg error, without the file name both repeat."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
