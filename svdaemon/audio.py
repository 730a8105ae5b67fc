"""Decode any audio or video file PyAV opens to 16 kHz mono float32, streamed in fixed-size blocks.

Memory stays bounded whatever the duration: frames are decoded, resampled and copied into one block at a
time, and a block is handed on as soon as it is full. Channels are averaged in numpy rather than by
FFmpeg's downmix, whose default for stereo to mono is (L + R) / sqrt(2): +3 dB on speech recorded alike on
both channels, and past full scale when both are loud.

Error rule: every problem found before the first sample (missing, unreadable or empty file, not media, no
audio stream, no decoder, data that never decodes, no samples at all) raises DecodeError, and `probe`
finds each of them up front. After audio has come out, data errors never raise: an undecodable packet is
skipped and counted, a demuxer that gives up ends the stream, and a warning says what was lost (audio that
ends well before the duration the headers state for it is reported the same way, as truncated; see
`_Progress.short_of_s`). Only a failure of the operating system to read the file raises mid-stream, since
the rest of it is unknowable.

A long file can be decoded in pieces on several cores: `decode_blocks(..., span=SampleSpan(first, end))`
seeks to shortly before `first` instead of decoding from the start, and pieces that tile the file join
into exactly the whole decode's samples (see `_span_samples`). Each piece applies the error rule to its
own stretch of the file; the open-time errors are raised by every piece.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
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

# The DURATION tag Matroska muxers (FFmpeg, mkvmerge) write for each track, "HH:MM:SS.nnnnnnnnn": Matroska has
# no per-track duration element, so FFmpeg's demuxer gives the tracks none and leaves this as a tag.
_MATROSKA_DURATION = re.compile(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)")

# PyAV 17 and 18 decode every tag when they open a file, strictly unless told otherwise, so one tag that is
# not UTF-8 (a title a Windows tagger wrote in cp1252) would fail the whole file. PyAV 19 took the option away
# and always decodes tags with surrogate escapes, which cannot fail; `_tag` makes both read the same.
_OPEN_OPTIONS = (
    {"metadata_errors": "replace"} if hasattr(av.container.InputContainer, "metadata_errors") else {}
)

# A piece decodes this much before its first sample and drops it: the decoder's warm-up after a seek (MP3's
# bit reservoir and overlap: 3 frames, 78 ms at 44.1 kHz; AAC and Vorbis: 1 frame; Opus converges to the
# continuous decode within about 0.6 s) and the resampler's filter (under 1 ms). At ~400x realtime a second
# costs 2.5 ms of decoding per piece.
_SPAN_MARGIN_S = 1.0
_SEEK_ATTEMPTS = 3  # each further back; then the piece is decoded from the start of the file


@dataclass(frozen=True)
class SampleSpan:
    """The output samples [first, end) of a whole-file decode; `end` None: to the end of its audio."""

    first: int
    end: int | None = None

    def __post_init__(self) -> None:
        if self.first < 0 or (self.end is not None and self.end <= self.first):
            raise ValueError(f"not a span of samples: [{self.first}, {self.end})")


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
    # Whether a SampleSpan of it is found by seeking; if not, each span is decoded from the start of the
    # file (the same samples, but splitting the file gains no time).
    seeks_exactly: bool = False


def probe(path: Path, audio_language: str | None = None) -> AudioInfo:
    """Describe the audio stream `decode_blocks` would pick, raising its open-time errors up front.

    Reads the container's metadata and decodes only the first audio frame, which proves the stream
    decodes. When neither the stream nor the container states a duration (e.g. a webm written live by a
    browser), the packets are read to their end, without decoding, to measure it.
    """
    with _open(path) as container:
        stream = _select_stream(container, path, audio_language)
        first = next(_frames(container, stream, path))
        stated = _stated_duration(container, stream)
        stated_s = stated.seconds if stated else None
        info = AudioInfo(
            path=path,
            duration_s=stated_s or 0.0,  # measured below when no header states it
            stream_index=stream.index,
            codec=stream.codec_context.name,
            channels=first.layout.nb_channels,
            sample_rate=first.sample_rate,
            language=_tag(stream.metadata, "language"),
            seeks_exactly=_seeks_exactly(first, stream),
        )
    return info if stated_s else replace(info, duration_s=_scanned_duration_s(path, info.stream_index))


def decode_blocks(
    path: Path, block_s: float = 30.0, audio_language: str | None = None, span: SampleSpan | None = None
) -> Iterator[np.ndarray]:
    """Yield the audio as 1-D float32 arrays of exactly `block_s` seconds at 16 kHz; the last may be shorter.

    Samples are not clipped: full scale is 1.0, and lossy decoders may overshoot it slightly.
    With `span`, only those samples of the whole decode, found by seeking; a span past the end yields nothing.
    A generator: open-time errors are raised by the first `next()` (see the module's error rule).
    """
    block_len = round(block_s * SAMPLE_RATE)
    if block_len <= 0:
        raise ValueError(f"block_s must be positive, got {block_s}")
    with _open(path) as container:
        stream = _select_stream(container, path, audio_language)
        stated = _stated_duration(container, stream)
        if span is None:
            samples = _mono_16k(_frames(container, stream, path, stated))
        else:
            samples = _span_samples(container, stream, path, stated, span)
        yield from _filled_blocks(samples, block_len)


def _filled_blocks(chunks: Iterable[np.ndarray], block_len: int) -> Iterator[np.ndarray]:
    """The samples regrouped into blocks of `block_len`; the last may be shorter."""
    block = np.empty(block_len, dtype=np.float32)
    filled = 0
    for chunk in chunks:
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


@dataclass(frozen=True)
class _Timeline:
    """Input-sample indices of a stream's timestamps, counted from the whole decode's first sample."""

    origin_pts: int
    time_base: Fraction
    rate: int

    def index(self, pts: int) -> int:
        return round((pts - self.origin_pts) * self.time_base * self.rate)

    def pts(self, index: int) -> int:
        return self.origin_pts + math.floor(index / (self.time_base * self.rate))


@dataclass(frozen=True)
class _Stated:
    """The audio's duration as the headers state it, and whether it is the audio stream's own.

    Not its own (`own` False) when only the container states a duration while it holds other streams: that is
    the longest stream's, and a video that runs on after the audio stops (a screen recording) outlasts it.
    """

    seconds: float
    own: bool


@dataclass
class _PacketEnds:
    """Where the demuxer found the last packet of each stream, on the file's clock (one for all streams).

    Kept as integer ticks in each stream's time base, so noting a packet costs no rational arithmetic.
    """

    audio_index: int
    ends: dict[int, tuple[int, Fraction]] = field(default_factory=dict)

    def note(self, packet: av.Packet) -> None:
        if packet.pts is None or not packet.time_base:
            return  # the flush packets at the end, and packets a demuxer cannot place
        index = packet.stream.index  # not packet.stream_index: PyAV leaves it 0 on flush packets
        end = packet.pts + (packet.duration or 0)
        if index not in self.ends or end > self.ends[index][0]:
            self.ends[index] = (end, packet.time_base)

    def others_past_audio_s(self) -> float:
        """How far past the audio's last packet the other streams' packets go; 0.0 when they do not."""
        seconds = {index: float(end * time_base) for index, (end, time_base) in self.ends.items()}
        audio_s = seconds.pop(self.audio_index, 0.0)
        return max(0.0, max(seconds.values(), default=audio_s) - audio_s)


@dataclass
class _Progress:
    """How far decoding got and what it lost on the way, for the error rule; updated as decoding goes.

    A piece counts only the undecodable packets whose timestamps fall in its own `window` (pts [low, high)),
    so pieces that tile a file report each loss once, and none for the warm-up before their first sample.
    `packet_ends` is kept only when the stated duration may be another stream's (see `short_of_s`): the
    decode then reads every stream's packets, not only the audio's.
    """

    stated: _Stated | None = None
    window: tuple[int | None, int | None] | None = None
    packet_ends: _PacketEnds | None = None
    position_s: float | None = None  # on the whole file's timeline; None until a frame has decoded
    skipped: int = 0
    first_error: str | None = None
    stopped: str | None = None

    @classmethod
    def of(
        cls, stream, stated: _Stated | None, window: tuple[int | None, int | None] | None = None
    ) -> _Progress:
        """A fresh count for a decode of `stream`, watching the other streams where the error rule needs it."""
        watch = stated is not None and not stated.own
        return cls(stated, window, _PacketEnds(stream.index) if watch else None)

    def skip(self, packet: av.Packet | None, error: av.error.FFmpegError) -> None:
        low, high = self.window or (None, None)
        pts = packet.pts if packet is not None else None
        if pts is None or ((low is None or low <= pts) and (high is None or pts < high)):
            self.skipped += 1
            self.first_error = self.first_error or _cause(error)

    def short_of_s(self) -> float | None:
        """The stated duration, when the audio, decoded to the end of its stream, fell well short of it.

        A container's own duration is its longest stream's. When the demuxer found other streams' packets well
        past the audio's last one, the audio ended there by itself (a recording whose sound stopped early, a
        shorter dub) and the file is not short; a file that was cut ends all its streams at about one time.
        """
        if self.stated is None:
            return None
        allowed_s = max(_SHORTFALL_S, _SHORTFALL_FRACTION * self.stated.seconds)
        if self.stated.seconds - (self.position_s or 0.0) <= allowed_s:
            return None
        if self.packet_ends is not None and self.packet_ends.others_past_audio_s() > allowed_s:
            return None
        return self.stated.seconds

    def report(self, path: Path, at_end: bool = True) -> None:
        """Warn, in one line, about audio that did not decode: the transcript will be partial.

        `at_end` False: the decode did not run to the end of the stream, so it cannot be short of it.
        """
        losses = []
        reached_s = self.position_s or 0.0
        if self.stopped:
            losses.append(f"decoding stopped at {reached_s:.1f} s ({self.stopped})")
        elif at_end and (stated_s := self.short_of_s()):
            losses.append(f"decoding stopped at {reached_s:.1f} s of the {stated_s:.1f} s the file states")
        if self.skipped:
            losses.append(f"skipped {self.skipped} undecodable packet(s) ({self.first_error})")
        if losses:
            logger.warning("%s: %s; kept what decoded (truncated or damaged file?)", path, ", ".join(losses))


def _frames(
    container: av.container.InputContainer, stream, path: Path, stated: _Stated | None = None
) -> Iterator[av.AudioFrame]:
    """The decoded frames of a whole stream, applying the module's error rule as they come."""
    progress = _Progress.of(stream, stated)
    yield from _decoded(container, stream, path, progress)
    if progress.position_s is None:
        cause = progress.first_error and f"corrupt data ({progress.first_error})"
        raise DecodeError(f"{path}: {cause or 'zero duration (no audio samples)'}")
    progress.report(path)


def _decoded(
    container: av.container.InputContainer,
    stream,
    path: Path,
    progress: _Progress,
    timeline: _Timeline | None = None,
) -> Iterator[av.AudioFrame]:
    """The frames with samples from the container's position on, keeping `progress`; raises only read errors.

    The position starts at the first frame's timestamp on `timeline`, else at zero.
    """
    ends = progress.packet_ends
    packets = container.demux(stream) if ends is None else container.demux()
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as error:
            if isinstance(error, OSError):
                at_s = progress.position_s or 0.0
                raise DecodeError(f"{path}: read error at {at_s:.1f} s ({_cause(error)})") from error
            progress.stopped = progress.first_error = progress.first_error or _cause(error)
            packet = None  # flush what the decoder still holds, then stop
        if packet is not None and ends is not None:
            ends.note(packet)
            if packet.stream.index != stream.index:
                continue
        try:
            frames = stream.codec_context.decode(packet)
        except av.error.FFmpegError as error:
            progress.skip(packet, error)
            frames = []
        for frame in frames:
            if frame.samples:
                if progress.position_s is None:
                    known = timeline is not None and frame.pts is not None
                    progress.position_s = timeline.index(frame.pts) / frame.sample_rate if known else 0.0
                progress.position_s += frame.samples / frame.sample_rate
                yield frame
        if packet is None:
            return


def _span_samples(
    container: av.container.InputContainer, stream, path: Path, stated: _Stated | None, span: SampleSpan
) -> Iterator[np.ndarray]:
    """The samples of `span`, resampled from an input index where the whole decode's 16 kHz grid falls.

    libswresample computes output sample k from the input around position k * rate / 16000, counted from
    the first sample it is fed. Fed from an input index that is a multiple of rate / gcd(rate, 16000) (441
    at 44.1 kHz, 3 at 48 kHz), it lands on the whole decode's grid, and once its filter and the decoder
    after the seek have warmed up (`_SPAN_MARGIN_S`), it gives the same values.
    """
    with contextlib.closing(_frames(container, stream, path)) as head:
        origin = next(head)  # raises the open-time errors, as the whole decode would
    rate = origin.sample_rate
    period = rate // math.gcd(rate, SAMPLE_RATE)
    margin = round(_SPAN_MARGIN_S * rate)
    start = max(0, (span.first * rate // SAMPLE_RATE - margin) // period * period)
    timeline = _Timeline(origin.pts, stream.time_base, rate) if _seeks_exactly(origin, stream) else None
    window = timeline and _pts_window(timeline, span)

    def fresh_progress() -> _Progress:
        return _Progress.of(stream, stated, window)

    with contextlib.ExitStack() as stack:
        found = None
        if start and timeline:
            found = _seeked_frames(
                container, stream, path, timeline, fresh_progress, start, margin, _source(origin)
            )
        if found is None:  # a span within the margin of the start, no exact timestamps, or seeking failed
            fresh = stack.enter_context(_open(path))
            start, progress = 0, fresh_progress()
            frames = _decoded(fresh, fresh.streams[stream.index], path, progress)
        else:
            frames, progress = found
        count = None if span.end is None else span.end - span.first
        ran_out = yield from _trimmed(_mono_16k(frames), span.first - start * SAMPLE_RATE // rate, count)
    # A shortfall is reported by the piece in which the audio ends, not by those after it.
    reached_span = (progress.position_s or 0.0) > span.first / SAMPLE_RATE
    progress.report(path, at_end=ran_out and reached_span)


def _seeks_exactly(first: av.AudioFrame, stream) -> bool:
    """Whether timestamps tell the sample they are at: a tick no longer than a sample.

    Not so for Matroska, WebM and ASF (WMA), which count milliseconds (rounded, whatever the rate), nor for
    AVI, which counts codec frames: a span of those is decoded from the start of the file.
    """
    # Not `time_base is not None`: PyAV 19 states an unknown time base as a falsy AVRational(0, 1), not None.
    return first.pts is not None and bool(stream.time_base) and stream.time_base * first.sample_rate <= 1


def _pts_window(timeline: _Timeline, span: SampleSpan) -> tuple[int | None, int | None]:
    """The timestamps of the input that makes up `span`: the packets whose losses are its to report."""
    low = timeline.pts(span.first * timeline.rate // SAMPLE_RATE) if span.first else None
    high = None if span.end is None else timeline.pts(-(-span.end * timeline.rate // SAMPLE_RATE))
    return low, high


def _seeked_frames(
    container: av.container.InputContainer,
    stream,
    path: Path,
    timeline: _Timeline,
    fresh_progress: Callable[[], _Progress],
    start: int,
    margin: int,
    source: tuple[str, str, int],
) -> tuple[Iterator[av.AudioFrame], _Progress] | None:
    """The frames from input index `start` on, after a seek to it; None when no seek lands at or before it.

    Seeking is exact for most formats and lands a little early for the rest; a demuxer that lands late is
    asked again from further back, `_SEEK_ATTEMPTS` times. None too where the audio there is not in the
    `source` format of the file's start (spliced streams): the timeline in input samples would not hold.
    """
    for attempt in range(_SEEK_ATTEMPTS):
        target = max(0, start - (4**attempt - 1) * margin)
        try:
            container.seek(timeline.pts(target), stream=stream, backward=True)
        except av.error.FFmpegError as error:
            logger.debug("%s: cannot seek (%s); decoding from the start", path, _cause(error))
            return None
        progress = fresh_progress()
        frames = _decoded(container, stream, path, progress, timeline)
        first = next(frames, None)
        if first is None:
            return iter(()), progress  # nothing at or after the target: the span is past the end of the audio
        if first.pts is None or _source(first) != source:  # no telling where it landed
            return None
        landed = timeline.index(first.pts)
        if landed <= start:
            return _from_index(itertools.chain([first], frames), landed, start), progress
        frames.close()
        logger.debug("%s: a seek to input sample %d landed at %d", path, target, landed)
    return None


def _from_index(frames: Iterable[av.AudioFrame], index: int, start: int) -> Iterator[av.AudioFrame]:
    """The input from index `start` on, of `frames` that begin at input index `index`."""
    for frame in frames:
        end = index + frame.samples
        if end > start:
            yield _without_head(frame, start - index) if index < start else frame
        index = end


def _trimmed(chunks: Iterable[np.ndarray], skip: int, count: int | None) -> Generator[np.ndarray, None, bool]:
    """The samples after the first `skip`, `count` of them (all when None); returns whether chunks ran out."""
    for chunk in chunks:
        if skip >= chunk.size:
            skip -= chunk.size
            continue
        chunk = chunk[skip : None if count is None else skip + count]
        skip = 0
        yield chunk
        if count is not None:
            count -= chunk.size
            if not count:
                return False
    return True


def _without_head(frame: av.AudioFrame, samples: int) -> av.AudioFrame:
    """`frame` less its first `samples` samples, copied by an AudioFifo, which takes any layout (even 7.1)."""
    fifo = av.AudioFifo()
    frame.pts = None  # the fifo checks timestamps for continuity, and these are not needed any more
    fifo.write(frame)
    fifo.read(samples)
    return fifo.read()


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
        return av.open(os.fspath(path.absolute()), **_OPEN_OPTIONS)
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
        tags = [_tag(stream.metadata, "language") for stream in streams]
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
        if _source(frame) != source:
            if resampler is not None:
                yield from _averaged(resampler.resample(None))
            # Packed, not planar: PyAV 18 crashes converting planar audio of 8 channels (7.1) to arrays.
            resampler = av.AudioResampler(format="flt", rate=SAMPLE_RATE)
            source = _source(frame)
        yield from _averaged(resampler.resample(frame))
    if resampler is not None:
        yield from _averaged(resampler.resample(None))


def _source(frame: av.AudioFrame) -> tuple[str, str, int]:
    """What a resampler is set up for: the sample format, the channel layout and the rate."""
    return frame.format.name, frame.layout.name, frame.sample_rate


def _averaged(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        interleaved = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
        yield interleaved[:, 0] if interleaved.shape[1] == 1 else interleaved.mean(axis=1, dtype=np.float32)


def _stated_duration(container: av.container.InputContainer, stream) -> _Stated | None:
    """The audio stream's duration from the headers, else the container's; None when neither states one."""
    if stream.duration is not None and stream.time_base:
        return _Stated(float(stream.duration * stream.time_base), own=True)
    if tagged_s := _matroska_duration_s(container, stream):
        return _Stated(tagged_s, own=True)
    if container.duration is not None:
        return _Stated(container.duration / av.time_base, own=len(container.streams) == 1)
    return None


def _matroska_duration_s(container: av.container.InputContainer, stream) -> float | None:
    """A Matroska or WebM track's own duration, from its DURATION tag; None without a well-formed one."""
    if "matroska" not in container.format.name:  # "matroska,webm"
        return None
    match = _MATROSKA_DURATION.fullmatch((_tag(stream.metadata, "DURATION") or "").strip())
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return (int(hours) * 60 + int(minutes)) * 60 + float(seconds) or None


def _tag(metadata: Mapping[str, str], key: str) -> str | None:
    """A tag's text, alike on every PyAV: bytes that were not UTF-8 read as U+FFFD.

    PyAV 17 and 18 replace them so when the file opens (see `_OPEN_OPTIONS`); PyAV 19 keeps them as surrogate
    escapes, which would raise wherever the text is encoded again (a UTF-8 log file, a JSON sidecar).
    """
    value = metadata.get(key)
    return None if value is None else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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
