"""The decoder pool and pieces decoded in parallel, against real decode processes and real PyAV files."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from svdaemon import audio
from svdaemon.audio import SampleSpan
from svdaemon.decoder import DecoderProcess
from svdaemon.decoder_pool import DecoderPool, PooledDecoder, piece_spans, worth_splitting
from svdaemon.errors import DecodeError

from media import write_audio, write_random_bytes

PIECE_S = 30.0  # the tests' piece: one decode block, so a 100 s file makes 4 pieces
RATE = 44100


def noisy_tone(seconds: float, seed: int = 0) -> np.ndarray:
    """A tone under noise: every sample differs, so a piece joined a sample off shows at once."""
    t = np.arange(round(seconds * RATE)) / RATE
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.05
    return (0.3 * np.sin(2 * np.pi * 330 * t) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory) -> Path:
    return write_audio(tmp_path_factory.mktemp("pool") / "talk.mp3", noisy_tone(100.0), RATE)


@pytest.fixture(scope="module")
def decoders():
    made = [DecoderProcess(block_s=30.0) for _ in range(3)]
    yield made
    for decoder in made:
        decoder.close()


def whole(path: Path) -> list[np.ndarray]:
    return list(audio.decode_blocks(path, block_s=30.0))


def test_pieces_cover_the_file_and_the_last_is_open_ended():
    length = 300 * audio.SAMPLE_RATE
    assert piece_spans(650.0) == [
        SampleSpan(0, length),
        SampleSpan(length, 2 * length),
        SampleSpan(2 * length, None),
    ]
    assert piece_spans(10.0) == [SampleSpan(0, None)]
    assert piece_spans(0.0) == [SampleSpan(0, None)]


def test_only_long_compressed_files_with_decoders_to_spare_are_split():
    info = audio.AudioInfo(Path("a.mp3"), 900.0, 0, "mp3float", 2, 44100, None, seeks_exactly=True)
    assert worth_splitting(info, decoders=2)
    assert not worth_splitting(info, decoders=1)
    assert not worth_splitting(replace(info, seeks_exactly=False), decoders=4)  # e.g. webm: ms timestamps
    assert not worth_splitting(replace(info, duration_s=500.0), decoders=4)
    assert not worth_splitting(replace(info, codec="pcm_s16le"), decoders=4)


@pytest.mark.integration
def test_a_file_decoded_in_pieces_equals_the_whole_decode_block_for_block(long_mp3, decoders):
    pool = DecoderPool(decoders)
    decoder = PooledDecoder(pool, piece_s=PIECE_S)
    info = decoder.probe(long_mp3)
    assert worth_splitting(info, pool.size, PIECE_S)
    pieces = list(decoder.blocks(long_mp3, None, info.duration_s))
    expected = whole(long_mp3)
    assert [len(block) for block in pieces] == [len(block) for block in expected]
    difference = np.abs(np.concatenate(pieces) - np.concatenate(expected)).max()
    assert difference <= 1e-5, difference
    assert pool.try_lease() is not None and pool.try_lease() is not None and pool.try_lease() is not None


@pytest.mark.integration
def test_a_file_abandoned_midway_gives_every_decoder_back(long_mp3, decoders):
    pool = DecoderPool(decoders)
    blocks = PooledDecoder(pool, piece_s=PIECE_S).blocks(long_mp3)
    next(blocks)
    blocks.close()
    leased = [pool.try_lease() for _ in decoders]
    assert None not in leased
    for decoder in leased:
        pool.give_back(decoder)
    assert len(list(PooledDecoder(pool, piece_s=PIECE_S).blocks(long_mp3))) == 4  # and they still work


@pytest.mark.integration
def test_another_file_gets_a_decoder_while_a_long_one_is_in_pieces(long_mp3, decoders, tmp_path):
    pool = DecoderPool(decoders[:2])
    short = write_audio(tmp_path / "short.mp3", noisy_tone(3.0, seed=1), RATE)
    blocks = PooledDecoder(pool, piece_s=PIECE_S).blocks(long_mp3)
    next(blocks)  # every decoder is now busy with a piece
    probed: list[audio.AudioInfo] = []
    other = threading.Thread(target=lambda: probed.append(PooledDecoder(pool).probe(short)))
    other.start()
    other.join(60)
    assert probed and probed[0].duration_s == pytest.approx(3.0, abs=0.1)
    assert sum(1 for _ in blocks) == 3


@pytest.mark.integration
def test_a_bad_file_is_a_decode_error_and_costs_no_decoder(decoders, tmp_path):
    pool = DecoderPool(decoders)
    bad = write_random_bytes(tmp_path / "noise.mp3")
    with pytest.raises(DecodeError, match=r"noise\.mp3"):
        list(PooledDecoder(pool, piece_s=PIECE_S).blocks(bad))
    assert all(pool.try_lease() is not None for _ in decoders)


@pytest.mark.integration
def test_a_span_asked_of_the_pool_is_decoded_on_one_decoder(long_mp3, decoders):
    span = SampleSpan(20 * audio.SAMPLE_RATE + 7, 50 * audio.SAMPLE_RATE)
    pieces = list(PooledDecoder(DecoderPool(decoders), piece_s=PIECE_S).blocks(long_mp3, span=span))
    expected = np.concatenate(whole(long_mp3))[span.first : span.end]
    assert np.array_equal(np.concatenate(pieces), expected)
