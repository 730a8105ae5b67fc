"""Decoding a file in pieces (SampleSpan) gives exactly the whole decode's samples, codec by codec.

Real files written with PyAV, real espeak speech, real seeking. Where tests/media.py has no way to ask for
an encoding (VBR MP3, AAC without noise substitution, low-rate Opus, 7.1 AAC), `write_encoded` makes it.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from svdaemon.audio import SAMPLE_RATE, SampleSpan, decode_blocks, probe
from svdaemon.errors import DecodeError
from svdaemon.synthetic_speech import make_speech_track

import media

pytestmark = pytest.mark.integration

SECONDS = 48.0
BLOCK_S = 7.0
EXACT = 1e-5  # measured: 0.0 for every codec below but AAC with noise substitution
FF_QP2LAMBDA = 118  # FFmpeg's scale for global_quality
_LAYOUTS = {1: "mono", 2: "stereo", 8: "7.1"}


def write_encoded(
    path: Path,
    samples: np.ndarray,
    rate: int,
    codec: str,
    bit_rate: int = 64000,
    vbr_quality: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """One audio track, (channels, samples) or (samples,), with encoder settings media.py does not offer."""
    planar = samples if samples.ndim == 2 else samples[np.newaxis]
    layout = _LAYOUTS[planar.shape[0]]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        ctx = stream.codec_context
        ctx.layout = layout
        ctx.format = av.Codec(codec, "w").audio_formats[0]
        ctx.bit_rate = bit_rate
        if vbr_quality is not None:
            ctx.qscale = True
            ctx.global_quality = vbr_quality * FF_QP2LAMBDA
        resampler = av.AudioResampler(
            format=ctx.format, layout=layout, rate=rate, frame_size=ctx.frame_size or None
        )
        # Packed: PyAV 18 cannot build a planar frame of 8 channels from an array.
        interleaved = np.ascontiguousarray(planar.T, dtype=np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for converted in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return path


def at_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz speech at a source rate (by linear interpolation: both decodes read the same file)."""
    times = np.arange(round(samples.size * rate / SAMPLE_RATE)) * SAMPLE_RATE / rate
    return np.interp(times, np.arange(samples.size), samples).astype(np.float32)


def stereo(samples: np.ndarray) -> np.ndarray:
    return np.stack([samples, 0.6 * samples])


# name: how to write it from 16 kHz speech into a folder
FILES = {
    "wav-44k-stereo": lambda d, s: media.write_audio(d / "a.wav", stereo(at_rate(s, 44100)), 44100),
    "flac-48k": lambda d, s: media.write_audio(d / "a.flac", at_rate(s, 48000), 48000),
    "mp3-cbr-44k-stereo": lambda d, s: media.write_audio(d / "cbr44.mp3", stereo(at_rate(s, 44100)), 44100),
    "mp3-cbr-48k": lambda d, s: media.write_audio(d / "cbr48.mp3", at_rate(s, 48000), 48000),
    "mp3-vbr-44k": lambda d, s: write_encoded(d / "vbr44.mp3", at_rate(s, 44100), 44100, "libmp3lame", 0, 4),
    "mp3-vbr-48k-stereo": lambda d, s: write_encoded(
        d / "vbr48.mp3", stereo(at_rate(s, 48000)), 48000, "libmp3lame", 0, 2
    ),
    "mp3-22k": lambda d, s: media.write_audio(d / "a22.mp3", at_rate(s, 22050), 22050),
    "m4a-aac-no-pns": lambda d, s: write_encoded(
        d / "a.m4a", stereo(at_rate(s, 44100)), 44100, "aac", 128000, options={"aac_pns": "0"}
    ),
    "ogg-opus-64k": lambda d, s: media.write_audio(d / "a.ogg", stereo(at_rate(s, 48000)), 48000),
    "opus-16k-silk": lambda d, s: write_encoded(d / "a.opus", at_rate(s, 48000), 48000, "libopus", 16000),
    "webm-opus": lambda d, s: media.write_audio(d / "a.webm", at_rate(s, 48000), 48000),
}
NOT_SEEKABLE = {"webm-opus"}  # Matroska counts milliseconds: its spans are decoded from the start


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return make_speech_track(SECONDS, seed=5).samples


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans")


@pytest.fixture(scope="module")
def mp3(folder: Path, speech: np.ndarray) -> Path:
    return FILES["mp3-cbr-44k-stereo"](folder, speech)


def whole(path: Path) -> np.ndarray:
    return np.concatenate(list(decode_blocks(path, BLOCK_S)))


def piece(path: Path, span: SampleSpan) -> np.ndarray:
    """The span's samples, checking the block contract: every block full but the span's last."""
    blocks = list(decode_blocks(path, BLOCK_S, span=span))
    assert all(
        block.dtype == np.float32 and block.size == round(BLOCK_S * SAMPLE_RATE) for block in blocks[:-1]
    )
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def boundaries(length: int) -> list[int | None]:
    """Four pieces cut at awkward places: no multiple of a codec frame, a block or a resampler period."""
    return [0, length * 23 // 100 + 7, length * 51 // 100 + 331, length * 77 // 100 - 13, None]


def joined(path: Path, cuts: list[int | None]) -> np.ndarray:
    return np.concatenate([piece(path, SampleSpan(first, end)) for first, end in itertools.pairwise(cuts)])


@pytest.mark.parametrize("name", sorted(FILES))
def test_pieces_join_into_the_whole_decode(folder: Path, speech: np.ndarray, name: str):
    path = FILES[name](folder, speech)
    expected = whole(path)

    got = joined(path, boundaries(expected.size))

    assert got.size == expected.size
    assert np.abs(got - expected).max() <= EXACT
    assert probe(path).seeks_exactly == (name not in NOT_SEEKABLE)


def test_aac_noise_substitution_differs_only_by_noise_of_the_same_level(folder: Path, speech: np.ndarray):
    """AAC's noise substitution (PNS) draws from a generator whose state runs from the start of the file.

    So a piece has other noise in those bands (above 4 kHz here) than the whole decode: the same
    level, not the same samples. An MP4 with a video track, as cameras and screen recorders write.
    """
    path = media.write_audio(folder / "video.mp4", stereo(at_rate(speech, 48000)), 48000)
    expected = whole(path)

    got = joined(path, boundaries(expected.size))

    assert got.size == expected.size
    error = got - expected
    assert 10 * np.log10(np.sum(expected**2) / np.sum(error**2)) > 35.0  # measured 46-49 dB
    spectrum = np.abs(np.fft.rfft(error)) ** 2
    assert spectrum[np.fft.rfftfreq(error.size, 1 / SAMPLE_RATE) < 3000].sum() < 0.01 * spectrum.sum()


def test_eight_channel_planar_audio_is_cut_without_crashing(folder: Path):
    """PyAV 18 crashes turning 8-plane audio into arrays: the first frame of a piece is cut another way."""
    rate = 48000
    channels = np.stack([media.tone(200.0 + 50 * i, 9.0, rate, amplitude=0.3) for i in range(8)])
    path = write_encoded(folder / "surround.m4a", channels, rate, "aac", 256000, options={"aac_pns": "0"})
    expected = whole(path)

    got = joined(path, boundaries(expected.size))

    assert probe(path).channels == 8
    assert got.size == expected.size and np.abs(got - expected).max() <= EXACT


def test_open_ended_and_overlong_spans_run_to_the_end(mp3: Path):
    expected = whole(mp3)
    first = expected.size - 123457

    np.testing.assert_array_equal(piece(mp3, SampleSpan(first)), expected[first:])
    np.testing.assert_array_equal(piece(mp3, SampleSpan(first, expected.size + 50000)), expected[first:])
    np.testing.assert_array_equal(piece(mp3, SampleSpan(0)), expected)


def test_a_span_near_the_start_is_decoded_from_the_start(mp3: Path):
    """Within the seek margin of the start there is nothing to seek over."""
    expected = whole(mp3)

    np.testing.assert_array_equal(piece(mp3, SampleSpan(4999, 90001)), expected[4999:90001])


def test_a_span_past_the_end_yields_nothing_and_says_nothing(mp3: Path, caplog):
    length = whole(mp3).size

    with caplog.at_level(logging.DEBUG, logger="svdaemon.audio"):
        assert piece(mp3, SampleSpan(length)).size == 0
        assert piece(mp3, SampleSpan(length + 16000, length + 32000)).size == 0

    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_open_time_errors_are_raised_by_every_piece(tmp_path: Path):
    garbage = media.write_random_bytes(tmp_path / "noise.mp3")
    video = media.write_video_only(tmp_path / "silent.mp4")

    for path, cause in [(garbage, "not a media file"), (video, "no audio stream")]:
        for span in (SampleSpan(0, 16000), SampleSpan(320000)):
            with pytest.raises(DecodeError, match=cause):
                next(decode_blocks(path, span=span))


@pytest.mark.parametrize(("first", "end"), [(-1, None), (100, 100), (100, 99)])
def test_a_span_must_hold_samples(first: int, end: int | None):
    with pytest.raises(ValueError, match="not a span"):
        SampleSpan(first, end)


def test_a_truncated_file_is_reported_once_by_the_piece_where_it_ends(folder: Path, mp3: Path, caplog):
    path = media.truncate(Path(shutil.copy(mp3, folder / "cut.mp3")), 0.6)
    expected = whole(path)
    cuts = [0, expected.size // 3 + 17, expected.size * 5 // 4 + 3, None]  # the last piece is past the end
    caplog.clear()  # the whole decode's own warning

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        got = joined(path, cuts)

    np.testing.assert_array_equal(got, expected)
    (record,) = caplog.records
    assert f"stopped at {expected.size / SAMPLE_RATE:.1f} s of the" in record.getMessage()


@pytest.mark.parametrize("name", ["screen.mp4", "no-track-durations.mkv"])
def test_pieces_of_a_video_that_outlasts_its_audio_say_nothing(folder: Path, name: str, caplog):
    """A screen recording whose sound stopped early: the piece where the audio ends takes no loss from it.

    The MP4 states the audio's own duration and its pieces seek; the Matroska file states only the
    container's (the video's), and its pieces are decoded from the start, reading every stream's packets.
    """
    tone = media.Track(media.tone(440.0, 6.0, 44100, channels=2), 44100)
    path = media.write_tracks(folder / name, [tone], video_s=12.0)
    if path.suffix == ".mkv":
        media.hide_track_durations(path)

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        expected = whole(path)
        got = joined(
            path, [0, expected.size // 3 + 17, expected.size * 2 // 3 + 5, expected.size + 1000, None]
        )

    assert expected.size / SAMPLE_RATE == pytest.approx(6.0, abs=0.04)
    np.testing.assert_array_equal(got, expected)
    assert not caplog.records


def test_each_undecodable_packet_is_counted_by_one_piece(folder: Path, mp3: Path, caplog):
    path = media.scramble(
        media.scramble(Path(shutil.copy(mp3, folder / "damaged.mp3")), 0.3, 3000, 1), 0.7, 3000, 2
    )
    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        whole(path)
        (whole_record,) = caplog.records
        caplog.clear()
        joined(path, boundaries(SAMPLE_RATE * int(SECONDS)))

    assert skipped(caplog.records) == skipped([whole_record]) > 0
    assert len(caplog.records) == 2  # one from each damaged piece


def skipped(records: list[logging.LogRecord]) -> int:
    return sum(int(re.search(r"skipped (\d+) undecodable", r.getMessage()).group(1)) for r in records)


def test_pieces_of_spliced_streams_join_too(folder: Path):
    """44.1 kHz stereo MP3, then 22.05 kHz mono: a piece starting in the second is decoded from the start."""
    spliced = media.write_spliced_mp3(folder, 4.0)
    expected = whole(spliced)

    got = joined(spliced, [0, 40001, 100007, None])

    np.testing.assert_array_equal(got, expected)
