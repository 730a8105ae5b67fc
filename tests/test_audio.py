"""The audio stage on real files written by PyAV: every container, track choice, bad input, bounded memory."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest

from svdaemon import audio
from svdaemon.audio import SAMPLE_RATE, decode_blocks, probe
from svdaemon.errors import DecodeError

import media

pytestmark = pytest.mark.integration

TONE_HZ = 440.0
SOURCE_RATE = 44100
SECONDS = 3.0
BLOCK_S = 1.0

# Decoded length may exceed the signal by one codec frame of padding that the container does not record
# (AAC 1024, AC-3 1536, WMA 2048 samples; MP3 in AVI keeps the encoder's delay too). Everything else is
# trimmed by FFmpeg and must be within 20 ms.
LENGTH_TOLERANCE_S = {
    ".m4a": 0.025,
    ".mp4": 0.025,
    ".mov": 0.025,
    ".mkv": 0.040,
    ".avi": 0.040,
    ".wma": 0.040,
}


def decode_all(path: Path, block_s: float = BLOCK_S, **kwargs) -> np.ndarray:
    """The whole decoded signal of a test-sized file, checking the block contract on the way."""
    blocks = list(decode_blocks(path, block_s, **kwargs))
    block_len = round(block_s * SAMPLE_RATE)
    assert all(block.dtype == np.float32 and block.ndim == 1 for block in blocks)
    assert all(block.size == block_len for block in blocks[:-1]), "every block but the last is full"
    assert 0 < blocks[-1].size <= block_len
    return np.concatenate(blocks)


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def decode_error(path: Path, **kwargs) -> str:
    """The DecodeError message, checking that probe and decode_blocks give the same one."""
    with pytest.raises(DecodeError) as from_probe:
        probe(path, **kwargs)
    with pytest.raises(DecodeError) as from_decode:
        next(decode_blocks(path, **kwargs))
    assert str(from_probe.value) == str(from_decode.value)
    return str(from_probe.value)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.mark.parametrize("ext", sorted(media.AUDIO_CODECS))
def test_every_container_decodes_to_its_duration_and_tone(media_dir: Path, ext: str):
    path = media.write_audio(
        media_dir / f"tone{ext}", media.tone(TONE_HZ, SECONDS, SOURCE_RATE, channels=2), SOURCE_RATE
    )
    info = probe(path)
    samples = decode_all(path)

    assert info.channels == 2
    assert info.duration_s == pytest.approx(SECONDS, abs=0.05)  # containers state padding or pre-skip
    assert samples.size / SAMPLE_RATE == pytest.approx(SECONDS, abs=LENGTH_TOLERANCE_S.get(ext, 0.020))
    assert np.abs(samples).max() <= 1.0
    assert peak_hz(samples) == pytest.approx(TONE_HZ, abs=1.0)
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_channels_are_averaged_not_summed(media_dir: Path):
    """FFmpeg's own stereo-to-mono mix is (L + R) / sqrt(2): it would turn 0.8 on both channels into 1.13."""
    both = media.tone(TONE_HZ, 1.0, SOURCE_RATE, channels=2, amplitude=0.8)
    left_only = both * np.array([[1.0], [0.0]], dtype=np.float32)

    assert np.abs(
        decode_all(media.write_audio(media_dir / "both.wav", both, SOURCE_RATE))
    ).max() == pytest.approx(0.8, abs=0.01)
    assert np.abs(
        decode_all(media.write_audio(media_dir / "left.wav", left_only, SOURCE_RATE))
    ).max() == pytest.approx(0.4, abs=0.01)


def test_format_changes_mid_stream_are_followed(media_dir: Path):
    """Two MP3s back to back (as stream captures splice them): 44.1 kHz stereo, then 22.05 kHz mono."""
    spliced = media.write_spliced_mp3(media_dir, 2.0)

    samples = decode_all(spliced)

    assert samples.size / SAMPLE_RATE == pytest.approx(4.0, abs=0.1)  # the second file's header frame
    assert peak_hz(samples[: SAMPLE_RATE * 3 // 2]) == pytest.approx(440, abs=1.0)
    assert peak_hz(samples[-SAMPLE_RATE * 3 // 2 :]) == pytest.approx(880, abs=1.0)


def test_stream_without_stated_duration_is_measured(media_dir: Path):
    """A WebM written live (as browsers record) has no duration in its header; probe measures it."""
    path = media_dir / "live.webm"
    media.write_tracks(path, [media.Track(media.tone(TONE_HZ, SECONDS, 48000), 48000)], streamed=True)
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.audio[0].duration is None

    assert probe(path).duration_s == pytest.approx(SECONDS, abs=0.05)
    assert decode_all(path).size / SAMPLE_RATE == pytest.approx(SECONDS, abs=0.020)


@pytest.fixture(scope="module")
def two_tracks(media_dir: Path) -> Path:
    """An MKV with an English track at 440 Hz, then a Japanese one at 880 Hz."""
    return media.write_tracks(
        media_dir / "dubbed.mkv",
        [
            media.Track(media.tone(440, 2.0, SOURCE_RATE), SOURCE_RATE, "eng"),
            media.Track(media.tone(880, 2.0, SOURCE_RATE), SOURCE_RATE, "jpn"),
        ],
    )


@pytest.mark.parametrize(
    ("audio_language", "tone_hz", "tag"),
    [(None, 440, "eng"), ("en", 440, "eng"), ("eng", 440, "eng"), ("ja", 880, "jpn"), ("JPN", 880, "jpn")],
)
def test_audio_language_picks_the_track(two_tracks: Path, audio_language, tone_hz, tag, caplog):
    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        info = probe(two_tracks, audio_language)
        samples = decode_all(two_tracks, audio_language=audio_language)

    assert info.language == tag
    assert peak_hz(samples) == pytest.approx(tone_hz, abs=1.0)
    assert not caplog.records


def test_audio_language_without_a_match_warns_and_uses_the_default(two_tracks: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        samples = decode_all(two_tracks, audio_language="ko")

    assert peak_hz(samples) == pytest.approx(440, abs=1.0)
    (record,) = caplog.records
    assert two_tracks.name in record.getMessage()
    assert "'ko'" in record.getMessage() and "eng, jpn" in record.getMessage()


def raw_title(path: Path) -> bytes:
    """The file's title tag as FFmpeg hands it over, byte for byte, whichever PyAV reads it."""
    if hasattr(av.container.InputContainer, "metadata_encoding"):  # PyAV 17 and 18 decode tags at open
        with av.open(str(path), metadata_encoding="latin-1") as container:
            return container.metadata["title"].encode("latin-1")
    with av.open(str(path)) as container:  # PyAV 19: UTF-8 with surrogate escapes, byte exact
        return container.metadata["title"].encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".m4a", ".flac", ".mkv"])
def test_tags_that_are_not_utf8_neither_fail_nor_change_the_audio(tmp_path: Path, ext: str, caplog):
    """Old taggers wrote titles in Latin-1 or cp1252 where the container says UTF-8; the audio is still there."""
    tracks = [media.Track(media.tone(TONE_HZ, 2.0, SOURCE_RATE, channels=2), SOURCE_RATE)]
    plain = media.write_tracks(tmp_path / f"plain{ext}", tracks, title="Cafe Nandu")
    tagged = media.write_latin1_tagged(tmp_path / f"latin-1{ext}", tracks)
    assert raw_title(tagged) == media.LATIN1_TITLE.encode("latin-1")  # handed over as it is: not UTF-8

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        info = probe(tagged)
        samples = decode_all(tagged)

    assert info.duration_s == probe(plain).duration_s and info.channels == 2
    assert np.array_equal(samples, decode_all(plain))
    assert peak_hz(samples) == pytest.approx(TONE_HZ, abs=1.0)
    assert not caplog.records


def test_language_tags_that_are_not_utf8_read_alike_on_every_pyav(tmp_path: Path, caplog):
    """PyAV 19 hands undecodable tags over as surrogate escapes, which no UTF-8 log file or JSON takes."""
    path = media.write_latin1_tagged(
        tmp_path / "dubbed.mkv",
        [
            media.Track(media.tone(440, 2.0, SOURCE_RATE), SOURCE_RATE, "q\xe9q"),
            media.Track(media.tone(880, 2.0, SOURCE_RATE), SOURCE_RATE, "jpn"),
        ],
    )

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        default = probe(path)
        japanese = probe(path, "ja")
        assert peak_hz(decode_all(path, audio_language="ja")) == pytest.approx(880, abs=1.0)
        assert not caplog.records
        assert peak_hz(decode_all(path, audio_language="ko")) == pytest.approx(440, abs=1.0)

    assert default.language == "q\ufffdq" and japanese.language == "jpn"
    (record,) = caplog.records
    assert "(tracks: q\ufffdq, jpn)" in record.getMessage()
    record.getMessage().encode("utf-8")  # no surrogates: a log file in UTF-8 takes it


def missing(directory: Path) -> Path:
    return directory / "missing.wav"


def folder(directory: Path) -> Path:
    (directory / "folder.mp3").mkdir()
    return directory / "folder.mp3"


def empty(directory: Path) -> Path:
    (directory / "empty.wav").touch()
    return directory / "empty.wav"


def text(directory: Path) -> Path:
    (directory / "notes.mp3").write_text("meeting notes\n" * 100)
    return directory / "notes.mp3"


def scrambled(directory: Path) -> Path:
    tone = media.tone(TONE_HZ, 2.0, SOURCE_RATE)
    return media.scramble_mp4_payload(media.write_audio(directory / "scrambled.m4a", tone, SOURCE_RATE))


def no_samples(directory: Path) -> Path:
    return media.write_audio(directory / "header-only.wav", np.zeros(0, dtype=np.float32), 16000)


BAD_INPUTS = {
    "missing": (missing, "no such file"),
    "directory": (folder, "is a directory"),
    "empty": (empty, "empty file (0 bytes)"),
    "random bytes": (lambda d: media.write_random_bytes(d / "noise.wav"), "not a media file"),
    "text": (text, "not a media file"),
    "video only": (lambda d: media.write_video_only(d / "screen.mp4"), "no audio stream"),
    "no decoder": (lambda d: media.write_wav_unknown_codec(d / "odd.wav"), "unsupported codec"),
    "corrupt": (scrambled, "corrupt data"),
    "zero duration": (no_samples, "zero duration"),
}


@pytest.mark.parametrize(("make", "cause"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_naming_file_and_cause(tmp_path: Path, make, cause):
    path = make(tmp_path)

    message = decode_error(path)

    assert message.startswith(f"{path}: ") and cause in message
    assert "\n" not in message


def test_unreadable_file_is_permission_denied():
    """As root (CI) chmod 000 does not stop reads, so the check runs as `nobody` through setpriv."""
    parent = Path(tempfile.mkdtemp())  # pytest's tmp_path is closed to other users
    try:
        parent.chmod(0o755)
        path = media.write_audio(parent / "locked.flac", media.tone(TONE_HZ, 1.0, 16000), 16000)
        path.chmod(0)
        message = _decode_error_as_nobody(path) if os.geteuid() == 0 else decode_error(path)
        assert message == f"{path}: permission denied"
    finally:
        shutil.rmtree(parent)


def _decode_error_as_nobody(path: Path) -> str:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root for the permission check")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
    checkout = Path(__file__).parents[1]
    can_run = subprocess.run(
        [*as_nobody, "import svdaemon.audio"], cwd=checkout, capture_output=True, check=False
    )
    if can_run.returncode != 0:
        pytest.skip("user 65534 cannot run this checkout's Python (its folders are closed to other users)")
    snippet = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from svdaemon.audio import probe
        from svdaemon.errors import DecodeError
        try:
            probe(Path(sys.argv[1]))
        except DecodeError as error:
            print(error)
        """
    )
    result = subprocess.run(
        [*as_nobody, snippet, str(path)], cwd=checkout, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_permission_error_from_ffmpeg_names_the_file(tmp_path: Path, monkeypatch):
    """The same answer when the OS refuses the read itself, whoever runs the test."""
    path = media.write_audio(tmp_path / "locked.wav", media.tone(TONE_HZ, 0.5, 16000), 16000)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(audio.av, "open", refuse)

    assert decode_error(path) == f"{path}: permission denied"


def test_truncated_mp3_keeps_what_decodes_and_says_where_it_stopped(tmp_path: Path, caplog):
    path = media.truncate(
        media.write_audio(tmp_path / "cut.mp3", media.tone(TONE_HZ, 10.0, 16000), 16000), 0.6
    )

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        samples = decode_all(path)

    decoded_s = samples.size / SAMPLE_RATE
    assert 5.0 < decoded_s < 6.5
    assert peak_hz(samples) == pytest.approx(TONE_HZ, abs=1.0)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and f"stopped at {decoded_s:.1f} s" in record.getMessage()


def short_sound(path: Path, hidden_durations: bool = False) -> Path:
    """A screen recording whose sound stopped early: 3 s of audio, 8 s of video."""
    recording = media.write_tracks(
        path, [media.Track(media.tone(TONE_HZ, 3.0, SOURCE_RATE), SOURCE_RATE)], video_s=8.0
    )
    return media.hide_track_durations(recording) if hidden_durations else recording


@pytest.mark.parametrize(
    ("name", "hidden_durations"),
    [("screen.mkv", False), ("screen.webm", False), ("screen.mp4", False), ("no-track-durations.mkv", True)],
)
def test_video_that_outlasts_the_audio_is_not_truncation(tmp_path: Path, name: str, hidden_durations, caplog):
    """The container's duration is its longest stream's; audio that ends before the video is all there is."""
    path = short_sound(tmp_path / name, hidden_durations)
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(8.0, abs=0.05)

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        info = probe(path)
        samples = decode_all(path)

    assert not caplog.records
    assert samples.size / SAMPLE_RATE == pytest.approx(3.0, abs=LENGTH_TOLERANCE_S.get(path.suffix, 0.020))
    assert peak_hz(samples) == pytest.approx(TONE_HZ, abs=1.0)
    # The audio's own duration where the file states one; else the container's, at most the file's length.
    assert info.duration_s == pytest.approx(8.0 if hidden_durations else 3.0, abs=0.05)


@pytest.mark.parametrize(
    "hidden_durations", [False, True], ids=["track durations", "container duration only"]
)
def test_a_cut_video_file_still_warns(tmp_path: Path, hidden_durations: bool, caplog):
    """A cut ends every stream at about one time: the audio falls short of the duration, and the video with it."""
    tone = media.tone(TONE_HZ, 8.0, SOURCE_RATE)
    path = media.write_tracks(tmp_path / "cut.mkv", [media.Track(tone, SOURCE_RATE)])
    media.truncate(media.hide_track_durations(path) if hidden_durations else path, 0.6)

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        samples = decode_all(path)

    decoded_s = samples.size / SAMPLE_RATE
    assert 3.0 < decoded_s < 6.0
    (record,) = caplog.records
    assert str(path) in record.getMessage()
    assert f"stopped at {decoded_s:.1f} s of the 8.0 s the file states" in record.getMessage()


def test_damage_in_the_middle_is_skipped_and_counted(tmp_path: Path, caplog):
    path = media.write_audio(tmp_path / "damaged.m4a", media.tone(TONE_HZ, 10.0, SOURCE_RATE), SOURCE_RATE)
    media.scramble(path, 0.4)

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        samples = decode_all(path)

    assert samples.size / SAMPLE_RATE > 9.0
    (record,) = caplog.records
    assert str(path) in record.getMessage() and "undecodable packet" in record.getMessage()


class FailingDisk:
    """Test double for a disk that fails mid-read: the real container, reads failing with EIO at a packet."""

    def __init__(self, container, failing_packet: int):
        self._container = container
        self._failing_packet = failing_packet

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._container.close()

    def demux(self, stream):
        for index, packet in enumerate(self._container.demux(stream)):
            if index == self._failing_packet:
                raise av.error.OSError(errno.EIO, "Input/output error")
            yield packet


def test_read_failure_after_audio_raises_with_the_time(tmp_path: Path, monkeypatch):
    """A disk error mid-file is not a short file: the caller must not take the partial audio for all of it."""
    path = media.write_audio(tmp_path / "on-bad-disk.flac", media.tone(TONE_HZ, 10.0, 16000), 16000)
    real_open = av.open
    monkeypatch.setattr(audio.av, "open", lambda *args, **kwargs: FailingDisk(real_open(*args, **kwargs), 20))

    blocks = decode_blocks(path, block_s=0.5)
    decoded = [next(blocks)]
    with pytest.raises(DecodeError) as raised:
        decoded.extend(blocks)

    assert decoded and str(raised.value).startswith(f"{path}: read error at ")
    assert "Input/output error" in str(raised.value)


@pytest.mark.parametrize("name", ["-会议 录音.m4a", "take:2.mp3", os.fsdecode(b"caf\xe9 latin-1.flac")])
def test_awkward_names_decode(tmp_path: Path, name: str):
    """A leading dash, unicode and spaces, a colon FFmpeg could take for a protocol, a name not in UTF-8."""
    path = media.write_audio(tmp_path / name, media.tone(TONE_HZ, 1.0, SOURCE_RATE), SOURCE_RATE)

    assert probe(path).duration_s == pytest.approx(1.0, abs=0.05)
    assert peak_hz(decode_all(path)) == pytest.approx(TONE_HZ, abs=1.0)


def test_long_file_decodes_in_bounded_memory(tmp_path: Path):
    """20 minutes decode holding about two blocks at a time, never the whole 77 MB signal."""
    minutes = 20
    path = media.write_long_tone(tmp_path / "long.flac", minutes * 60, rate=8000)
    block_s = 30.0
    block_bytes = round(block_s * SAMPLE_RATE) * 4

    tracemalloc.start()
    try:
        sizes = [block.size for block in decode_blocks(path, block_s)]
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(sizes) == minutes * 2 and set(sizes[:-1]) == {round(block_s * SAMPLE_RATE)}
    assert sum(sizes) / SAMPLE_RATE == pytest.approx(minutes * 60, abs=0.020)
    assert peak_bytes < 4 * block_bytes, f"peak {peak_bytes / 1e6:.1f} MB of Python memory"
