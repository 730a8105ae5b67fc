"""The decode process on real files: the same blocks and errors as in-process, and it survives faults."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from svdaemon import audio
from svdaemon.decoder import DecoderProcess
from svdaemon.errors import DecodeError

import media

pytestmark = pytest.mark.integration

BLOCK_S = 1.0
TONE_HZ = 440.0


def hang(
    path: Path, block_s: float, audio_language: str | None, span: audio.SampleSpan | None
) -> Iterator[np.ndarray]:
    """Decode target standing in for FFmpeg stuck in a loop: one block, then nothing, for ever."""
    yield np.zeros(round(block_s * audio.SAMPLE_RATE), dtype=np.float32)
    while True:
        time.sleep(60)


def segfault(
    path: Path, block_s: float, audio_language: str | None, span: audio.SampleSpan | None
) -> Iterator[np.ndarray]:
    """Decode target standing in for FFmpeg crashing on a damaged WAV after its first block."""
    blocks = audio.decode_blocks(path, block_s, audio_language, span)
    yield next(blocks)
    if path.suffix == ".wav":
        os.kill(os.getpid(), signal.SIGSEGV)
    yield from blocks


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decoder-media")
    return {
        "wav": media.write_audio(folder / "tone.wav", media.tone(TONE_HZ, 3.5, 44100, channels=2), 44100),
        "mp3": media.write_audio(folder / "tone.mp3", media.tone(660.0, 4.2, 16000), 16000),
        "garbage": media.write_random_bytes(folder / "noise.m4a"),
        "video": media.write_video_only(folder / "silent.mp4"),
    }


@pytest.fixture(scope="module")
def decoder() -> Iterator[DecoderProcess]:
    with DecoderProcess(block_s=BLOCK_S) as process:
        yield process


def in_process(path: Path) -> list[np.ndarray]:
    return [block.copy() for block in audio.decode_blocks(path, block_s=BLOCK_S)]


def assert_same_blocks(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [block.size for block in got] == [block.size for block in expected]
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["wav", "mp3"])
def test_blocks_equal_in_process_decoding(decoder: DecoderProcess, files: dict[str, Path], kind: str):
    assert_same_blocks(list(decoder.blocks(files[kind])), in_process(files[kind]))


@pytest.mark.parametrize("kind", ["wav", "mp3"])
def test_spans_from_the_child_join_into_the_whole_file(
    decoder: DecoderProcess, files: dict[str, Path], kind: str
):
    """Pieces as parallel decoders get them: the seek happens in the child, the blocks are the span's."""
    path = files[kind]
    whole = np.concatenate(in_process(path))
    cuts = [0, 20011, 45001, None]  # past the one-second seek margin: the later pieces seek

    pieces = [list(decoder.blocks(path, span=audio.SampleSpan(first, end))) for first, end in pairwise(cuts)]

    for blocks, (first, end) in zip(pieces, pairwise(cuts), strict=True):
        assert_same_blocks(
            blocks, list(audio.decode_blocks(path, BLOCK_S, span=audio.SampleSpan(first, end)))
        )
    np.testing.assert_array_equal(np.concatenate([np.concatenate(blocks) for blocks in pieces]), whole)
    assert list(decoder.blocks(path, span=audio.SampleSpan(whole.size + 1))) == []


def test_probe_runs_in_the_child(decoder: DecoderProcess, files: dict[str, Path]):
    assert decoder.probe(files["mp3"]) == audio.probe(files["mp3"])


@pytest.mark.parametrize("kind", ["garbage", "video", "missing"])
def test_bad_files_give_the_in_process_message(
    decoder: DecoderProcess, files: dict[str, Path], tmp_path: Path, kind: str
):
    path = files.get(kind, tmp_path / "gone.wav")
    with pytest.raises(DecodeError) as expected:
        audio.probe(path)
    with pytest.raises(DecodeError) as from_probe:
        decoder.probe(path)
    with pytest.raises(DecodeError) as from_blocks:
        list(decoder.blocks(path, duration_s=1.0))  # skips the probe: the decode request itself fails
    assert str(from_probe.value) == str(from_blocks.value) == str(expected.value)


def test_one_child_serves_many_files(decoder: DecoderProcess, files: dict[str, Path]):
    list(decoder.blocks(files["wav"]))
    pid = decoder.pid
    with pytest.raises(DecodeError):
        decoder.probe(files["garbage"])
    list(decoder.blocks(files["mp3"]))
    assert pid is not None and decoder.pid == pid


def test_child_killed_mid_file_fails_that_file_only(files: dict[str, Path]):
    with DecoderProcess(block_s=BLOCK_S) as decoder:
        blocks = decoder.blocks(files["wav"])
        next(blocks)
        first_pid = decoder.pid
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(DecodeError) as raised:
            list(blocks)
        assert str(raised.value) == f"{files['wav']}: the decoder crashed (SIGKILL)"

        assert_same_blocks(list(decoder.blocks(files["mp3"])), in_process(files["mp3"]))
        assert decoder.pid not in (None, first_pid)


def test_segfault_in_the_decoder_is_reported_and_the_next_file_works(files: dict[str, Path]):
    with DecoderProcess(block_s=BLOCK_S, decode_target=segfault) as crashing:
        with pytest.raises(DecodeError) as raised:
            list(crashing.blocks(files["wav"]))
        assert str(raised.value) == f"{files['wav']}: the decoder crashed (SIGSEGV)"
        assert_same_blocks(list(crashing.blocks(files["mp3"])), in_process(files["mp3"]))


def test_hanging_child_is_stopped_and_replaced(files: dict[str, Path]):
    with DecoderProcess(block_s=BLOCK_S, min_timeout_s=1.0, decode_target=hang) as decoder:
        blocks = decoder.blocks(files["wav"])
        next(blocks)
        hung_pid = decoder.pid
        with pytest.raises(DecodeError) as raised:
            next(blocks)
        assert str(raised.value).startswith(f"{files['wav']}: the decoder hung (")
        assert str(raised.value).endswith(") and was stopped")
        assert decoder.pid is None

        assert decoder.probe(files["mp3"]) == audio.probe(files["mp3"])
        assert decoder.pid not in (None, hung_pid)


def test_abandoned_file_leaves_no_stale_blocks(decoder: DecoderProcess, files: dict[str, Path]):
    pid = decoder.pid
    blocks = decoder.blocks(files["wav"])
    next(blocks)
    blocks.close()

    assert_same_blocks(list(decoder.blocks(files["mp3"])), in_process(files["mp3"]))
    assert decoder.pid == pid


def test_child_warnings_reach_the_parent_log(decoder: DecoderProcess, tmp_path: Path, caplog):
    path = media.truncate(
        media.write_audio(tmp_path / "cut.mp3", media.tone(TONE_HZ, 10.0, 16000), 16000), 0.6
    )

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        decoded_s = sum(block.size for block in decoder.blocks(path)) / audio.SAMPLE_RATE

    (record,) = caplog.records
    assert record.name == "svdaemon.audio" and record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and f"stopped at {decoded_s:.1f} s" in record.getMessage()


def test_tags_that_are_not_utf8_cross_from_the_child(decoder: DecoderProcess, tmp_path: Path, caplog):
    """A Latin-1 title and language tag: probe, blocks and the track-choice warning come back as in process."""
    path = media.write_latin1_tagged(
        tmp_path / "dubbed.mkv",
        [
            media.Track(media.tone(TONE_HZ, 2.0, 44100), 44100, "q\xe9q"),
            media.Track(media.tone(880.0, 2.0, 44100), 44100, "jpn"),
        ],
    )

    with caplog.at_level(logging.WARNING, logger="svdaemon.audio"):
        info = decoder.probe(path, "ko")
        blocks = list(decoder.blocks(path, "ko", duration_s=info.duration_s))

    assert info == audio.probe(path, "ko") and info.language == "q\ufffdq"
    assert_same_blocks(blocks, [block.copy() for block in audio.decode_blocks(path, BLOCK_S, "ko")])
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: no audio track in language 'ko' (tracks: q\ufffdq, jpn); using track #0"
    ] * 4  # the child's probe and decode, then the same two in process


def test_child_does_not_load_torch(decoder: DecoderProcess, files: dict[str, Path]):
    list(decoder.blocks(files["mp3"]))
    mapped = Path(f"/proc/{decoder.pid}/maps").read_text()
    assert "libav" in mapped or "avcodec" in mapped  # the check sees shared libraries at all
    assert "torch" not in mapped


def test_close_stops_the_child(files: dict[str, Path]):
    decoder = DecoderProcess(block_s=BLOCK_S)
    decoder.probe(files["wav"])
    pid = decoder.pid
    decoder.close()
    assert decoder.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_child_that_died_while_idle_is_replaced_without_failing_a_file(files: dict[str, Path]):
    with DecoderProcess(block_s=BLOCK_S) as decoder:
        decoder.probe(files["wav"])
        idle_pid = decoder.pid
        os.kill(idle_pid, signal.SIGKILL)
        os.waitid(os.P_PID, idle_pid, os.WEXITED | os.WNOWAIT)

        assert_same_blocks(list(decoder.blocks(files["mp3"])), in_process(files["mp3"]))
        assert decoder.pid not in (None, idle_pid)


def test_close_in_the_middle_of_a_file_stops_the_child(files: dict[str, Path]):
    decoder = DecoderProcess(block_s=BLOCK_S)
    blocks = decoder.blocks(files["wav"])
    next(blocks)
    pid = decoder.pid
    decoder.close()
    blocks.close()
    assert decoder.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_hung_child_dies_with_a_killed_parent(files: dict[str, Path]):
    """A daemon killed with SIGKILL leaves no decoder behind, even one stuck inside FFmpeg."""
    script = (
        "import sys, time; from pathlib import Path; import test_decoder; "
        "from svdaemon.decoder import DecoderProcess; "
        "decoder = DecoderProcess(block_s=1.0, decode_target=test_decoder.hang); "
        "blocks = decoder.blocks(Path(sys.argv[1]), duration_s=3.0); next(blocks); "
        "print(decoder.pid, flush=True); time.sleep(600)"
    )
    tests_dir = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, *sys.path]))
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(files["wav"])], stdout=subprocess.PIPE, text=True, env=env
    )
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()

    give_up = time.monotonic() + 30.0  # the kernel's SIGKILL is immediate; this only bounds a failure
    while _is_running(child_pid) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert not _is_running(child_pid)


def _is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait long for a busy or absent reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
