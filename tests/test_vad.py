"""The vad stage: span rules on synthetic probabilities, then real silero-vad on espeak-ng speech."""

from __future__ import annotations

import logging
import threading
import tracemalloc
from itertools import pairwise

import numpy as np
import pytest
import torch

from svdaemon.config import VadSettings
from svdaemon.errors import EnvironmentFault
from svdaemon.synthetic_speech import SENTENCES, SpeechTrack, build_track, make_speech_track
from svdaemon.vad import (
    ROW_WINDOWS,
    SAMPLE_RATE,
    WINDOW,
    Pending,
    SpanRules,
    SpeechChunk,
    SpeechSegmenter,
    VadNetwork,
    WindowScorer,
    load_vad_model,
    merge_runs,
    settle,
    speech_runs,
)

from doubles import wait_for

RULES = SpanRules.of(VadSettings())  # gap 10 windows, pad 1600, min speech 4000, max 480000 samples
PAD = RULES.pad_samples
EDGE_TOLERANCE = round(0.1 * SAMPLE_RATE)


def probabilities(length: int, speech: list[tuple[int, int]], level: float = 0.9) -> np.ndarray:
    """`length` windows of silence (0.05) with `level` over the given [start, end) window ranges."""
    probs = np.full(length, 0.05, np.float32)
    for start, end in speech:
        probs[start:end] = level
    return probs


def settle_all(probs: np.ndarray, audio_end: int, energy: np.ndarray | None = None) -> list[tuple[int, int]]:
    energy = np.ones_like(probs) if energy is None else energy
    return settle(probs, energy, Pending(), RULES, audio_end)[0]


# ---- span rules -----------------------------------------------------------------------------------------


def test_runs_enter_at_threshold_and_leave_below_negative_threshold():
    probs = np.array([0.1, 0.6, 0.4, 0.36, 0.3, 0.45, 0.5, 0.9, 0.2], np.float32)
    assert speech_runs(probs, 0.5, 0.35) == [(1, 4), (6, 8)]
    assert speech_runs(probs[2:], 0.5, 0.35, in_speech=True) == [(0, 2), (4, 6)]
    assert speech_runs(probs[4:], 0.5, 0.35, in_speech=True) == [(0, 0), (2, 4)]
    assert speech_runs(np.zeros(0, np.float32), 0.5, 0.35) == []


def test_gaps_shorter_than_min_silence_are_merged():
    assert merge_runs([(0, 10), (19, 30), (40, 50)], min_gap=10) == [(0, 30), (40, 50)]
    assert RULES.min_gap_windows == 10  # 0.3 s is 9.4 windows: a 9-window gap (288 ms) merges, 10 does not
    spans = settle_all(probabilities(200, [(20, 40), (49, 70), (80, 100)]), 200 * WINDOW)
    assert spans == [(20 * WINDOW - PAD, 70 * WINDOW + PAD), (80 * WINDOW - PAD, 100 * WINDOW + PAD)]


def test_padding_is_clamped_to_the_audio():
    audio_end = 150 * WINDOW - 100  # the last window is partial
    spans = settle_all(probabilities(150, [(0, 20), (100, 150)]), audio_end)
    assert spans == [(0, 20 * WINDOW + PAD), (100 * WINDOW - PAD, audio_end)]


def test_padding_never_overlaps_neighbours():
    rules = SpanRules.of(VadSettings(min_silence_s=0.1, pad_s=0.5))
    assert rules.pad_samples == 800  # capped at half the minimum gap
    probs = probabilities(100, [(10, 30), (34, 60)])
    spans = settle(probs, np.ones_like(probs), Pending(), rules, 100 * WINDOW)[0]
    assert spans[0][1] <= spans[1][0]


def test_runs_shorter_than_min_speech_are_dropped_after_merging():
    audio_end = 300 * WINDOW
    assert settle_all(probabilities(300, [(20, 27)]), audio_end) == []  # 7 windows: 224 ms
    assert settle_all(probabilities(300, [(20, 28)]), audio_end) == [(20 * WINDOW - PAD, 28 * WINDOW + PAD)]
    blip_then_speech = probabilities(300, [(100, 103), (110, 150)])  # the blip is within min_silence
    assert settle_all(blip_then_speech, audio_end) == [(100 * WINDOW - PAD, 150 * WINDOW + PAD)]


def test_long_span_is_cut_at_the_quietest_window_of_its_latter_half():
    probs = probabilities(4000, [(100, 3500)])
    energy = np.ones_like(probs)
    probs[300] = 0.0  # quietest of all, but in the first half of the first piece: not a candidate
    probs[[700, 900]] = 0.051, 0.049  # equal at 0.01 resolution: energy decides
    energy[900] = 0.5
    spans = settle_all(probs, 4000 * WINDOW, energy)
    assert spans[0] == (100 * WINDOW - PAD, 900 * WINDOW)
    assert all(end == start for (_, end), (start, _) in pairwise(spans))
    assert spans[-1][1] == 3500 * WINDOW + PAD
    assert max(end - start for start, end in spans) <= RULES.max_samples


def test_settling_in_pieces_decides_the_same_spans_as_all_at_once():
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 400, 120)
    lengths[10] = 2500  # one span far over max_segment_s
    levels = np.resize([0.15, 0.8], len(lengths)) + rng.uniform(-0.15, 0.15, len(lengths))
    probs = np.clip(np.repeat(levels, lengths) + rng.normal(0, 0.2, lengths.sum()), 0, 1).astype(np.float32)
    energy = rng.uniform(0, 1, len(probs)).astype(np.float32)
    audio_end = len(probs) * WINDOW - 77
    whole = settle(probs, energy, Pending(), RULES, audio_end)[0]

    spans, pending, seen = [], Pending(), 0
    for size in rng.integers(1, 700, 1000):
        seen = min(seen + int(size), len(probs))
        window = slice(pending.origin, seen)
        decided, pending = settle(probs[window], energy[window], pending, RULES, None)
        spans += decided
    window = slice(pending.origin, None)
    spans += settle(probs[window], energy[window], pending, RULES, audio_end)[0]
    assert spans == whole
    assert len(whole) > 20
    assert max(end - start for start, end in whole) <= RULES.max_samples


def test_unusable_settings_are_refused():
    with pytest.raises(ValueError, match="max_segment_s"):
        SpanRules.of(VadSettings(max_segment_s=0.5))


# ---- real silero on espeak speech -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> torch.jit.ScriptModule:
    return load_vad_model()


@pytest.fixture(scope="module")
def network(model) -> VadNetwork:
    return VadNetwork(model)


def segment(network, samples: np.ndarray, block: int | None = None, settings=None) -> list[SpeechChunk]:
    segmenter = SpeechSegmenter(network, settings or VadSettings())
    block = block or max(len(samples), 1)
    chunks = [
        chunk
        for start in range(0, len(samples), block)
        for chunk in segmenter.push(samples[start : start + block])
    ]
    return chunks + segmenter.finish()


def spans_of(chunks: list[SpeechChunk]) -> list[tuple[int, int]]:
    return [(chunk.start_sample, chunk.end_sample) for chunk in chunks]


def long_utterance(sentences: int = 14) -> list[str | float]:
    """Sentences with 0.15 s pauses: one span of about 40 s, longer than max_segment_s."""
    pieces: list[str | float] = []
    for text in SENTENCES[:sentences]:
        pieces += [text, 0.15]
    return pieces


@pytest.fixture(scope="module")
def mixed_track() -> SpeechTrack:
    """About 75 s: utterances with varied pauses, a long utterance, more utterances."""
    pieces: list[str | float] = [0.7]
    for index, text in enumerate(SENTENCES[::3]):
        pieces += [text, 0.4 + 0.3 * (index % 4)]
    pieces += [*long_utterance(), 1.0, SENTENCES[1], 0.2, SENTENCES[4], 2.0]
    return build_track(pieces, seed=1, noise_dbfs=-60)


@pytest.mark.integration
def test_speech_tracks_are_exact_and_reproducible():
    track = make_speech_track(40, 0.3, seed=9)
    assert len(track.samples) == 40 * SAMPLE_RATE
    assert np.array_equal(track.samples, make_speech_track(40, 0.3, seed=9).samples)
    assert all(0 <= start < end <= next_start for (start, end), (next_start, _) in pairwise(track.speech))
    assert sum(end - start for start, end in track.speech) <= 0.7 * len(track.samples)
    assert np.abs(track.samples[: track.speech[0][0]]).max() < 0.01  # silence is silence (and low noise)


@pytest.mark.integration
def test_batched_probabilities_match_the_sequential_path(model, network):
    track = make_speech_track(20, 0.25, seed=4)
    windows = -(-len(track.samples) // WINDOW)
    padded = np.zeros(windows * WINDOW, np.float32)
    padded[: len(track.samples)] = track.samples
    model.reset_states()
    with torch.inference_mode():
        sequential = np.array(
            [model(torch.from_numpy(window), SAMPLE_RATE).item() for window in padded.reshape(-1, WINDOW)]
        )
    scorer = WindowScorer(network)
    assert len(scorer.push(track.samples).probs) == 0  # too little audio for a full batch: it waits
    batched = scorer.finish().probs

    difference = np.abs(batched - sequential)
    assert difference[:ROW_WINDOWS].max() < 1e-4  # the file's first row starts cold, exactly like silero
    assert difference.mean() < 0.05
    assert np.mean((batched >= 0.5) == (sequential >= 0.5)) > 0.97


def scored_alone(network: VadNetwork, tracks: list[np.ndarray]) -> list[np.ndarray]:
    probs = []
    for samples in tracks:
        scorer = WindowScorer(network)
        probs.append(np.concatenate([scorer.push(samples).probs, scorer.finish().probs]))
    return probs


@pytest.mark.integration
def test_streams_scored_at_once_share_model_calls_and_keep_their_own_results(network):
    tracks = [make_speech_track(70 + 10 * n, 0.3, seed=20 + n).samples for n in range(4)]
    calls_before = network.calls
    alone = scored_alone(network, tracks)
    calls_alone = network.calls - calls_before
    results: dict[int, np.ndarray] = {}

    def score(index: int) -> None:
        results[index] = scored_alone(network, [tracks[index]])[0]

    # Hold the network's call lock (private: the only way to make the threads' calls meet for sure) until
    # every stream waits; the next call then scores the rows of all four streams as one batch.
    calls_before = network.calls
    with network._running:
        threads = [threading.Thread(target=score, args=(n,)) for n in range(len(tracks))]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: len(network._waiting) == len(tracks), 10)
    for thread in threads:
        thread.join()
    # The four first calls were one; later ones meet or not, as the threads' timing has it.
    assert network.calls - calls_before <= calls_alone - (len(tracks) - 1)
    for index, probs in enumerate(alone):
        assert np.abs(results[index] - probs).max() < 1e-5, index


@pytest.mark.integration
def test_a_failing_gpu_leaves_vad_on_the_cpu_with_a_warning(model, monkeypatch, caplog):
    """The GPU is simulated: its name and its failure stand for a card that CI does not have."""
    network = VadNetwork(model)
    samples = make_speech_track(10, 0.3, seed=5).samples
    expected = scored_alone(network, [samples])[0]
    run_rows = network._run_rows

    def failing_on_the_card(rows, cold):
        if network.device != "cpu":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return run_rows(rows, cold)

    monkeypatch.setattr(network, "_run_rows", failing_on_the_card)
    monkeypatch.setattr(network, "_device", "cuda:0")
    with caplog.at_level(logging.WARNING, "svdaemon.vad"):
        probs = scored_alone(network, [samples])[0]
    assert network.device == "cpu"
    assert np.array_equal(probs, expected)
    assert "VAD on cuda:0 failed" in caplog.text and "illegal memory access" in caplog.text
    network.move_to("cuda:0")  # the worker places VAD with the engine before every pool: it stays off
    assert network.device == "cpu"


def test_a_card_that_keeps_the_weights_fails_every_merged_stream_as_an_environment_fault(model, monkeypatch):
    """The GPU is simulated, as above; this card also refuses to give the network back to the CPU."""
    network = VadNetwork(model)

    class LostCard:
        def to(self, device):
            raise RuntimeError("CUDA error: unspecified launch failure")

    def failing(rows, cold):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(network, "_run_rows", failing)
    monkeypatch.setattr(network, "_device", "cuda:0")
    monkeypatch.setattr(network, "_network", LostCard())
    outcomes: list[BaseException] = []

    def score() -> None:
        try:
            scorer = WindowScorer(network)
            scorer.push(make_speech_track(5, 0.3, seed=6).samples)  # too short to score before `finish`
            scorer.finish()
        except BaseException as error:
            outcomes.append(error)

    with network._running:  # the three calls meet in one batch (see above)
        threads = [threading.Thread(target=score) for _ in range(3)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: len(network._waiting) == 3, 10)
    for thread in threads:
        thread.join()
    assert len(outcomes) == 3 and all(isinstance(error, EnvironmentFault) for error in outcomes), outcomes
    assert "could not leave it" in str(outcomes[0]) and network.device == "cpu"


@pytest.mark.gpu
def test_vad_on_the_gpu_scores_like_the_cpu(network):
    tracks = [make_speech_track(80, 0.3, seed=30 + n).samples for n in range(3)]
    on_gpu = VadNetwork(load_vad_model(), "cuda")
    assert on_gpu.device == "cuda"
    for cpu_probs, gpu_probs in zip(scored_alone(network, tracks), scored_alone(on_gpu, tracks), strict=True):
        assert np.abs(cpu_probs - gpu_probs).max() < 1e-3
        assert np.mean((cpu_probs >= 0.5) == (gpu_probs >= 0.5)) > 0.999
    on_gpu.move_to("cpu")
    assert {parameter.device.type for parameter in on_gpu._network.parameters()} == {"cpu"}


@pytest.mark.integration
def test_span_edges_are_the_utterance_edges(network):
    track = build_track(
        [0.8, SENTENCES[0], 1.0, SENTENCES[1], 1.0, SENTENCES[2], 1.2, SENTENCES[3], 0.7], noise_dbfs=-60
    )
    chunks = segment(network, track.samples)
    assert len(chunks) == len(track.speech)
    for chunk, (start, end) in zip(chunks, track.speech, strict=True):
        assert abs(chunk.start_sample + PAD - start) <= EDGE_TOLERANCE
        assert abs(chunk.end_sample - PAD - end) <= EDGE_TOLERANCE
        assert np.array_equal(chunk.samples, track.samples[chunk.start_sample : chunk.end_sample])
        assert chunk.end_s == pytest.approx(chunk.end_sample / SAMPLE_RATE)


@pytest.mark.integration
def test_pauses_shorter_than_min_silence_are_merged(network):
    short_pause = build_track([0.5, SENTENCES[0], 0.12, SENTENCES[1], 0.5], noise_dbfs=-60)
    assert len(segment(network, short_pause.samples)) == 1
    long_pause = build_track([0.5, SENTENCES[0], 0.6, SENTENCES[1], 0.5], noise_dbfs=-60)
    assert len(segment(network, long_pause.samples)) == 2
    assert len(segment(network, long_pause.samples, settings=VadSettings(min_silence_s=1.0))) == 1


@pytest.mark.integration
def test_long_utterance_is_cut_in_a_pause_into_pieces_within_max_segment(network):
    track = build_track([0.5, *long_utterance()], noise_dbfs=-60)
    chunks = segment(network, track.samples)
    assert len(chunks) >= 2
    assert all(chunk.end_sample - chunk.start_sample <= 30 * SAMPLE_RATE for chunk in chunks)
    assert all(left.end_sample == right.start_sample for left, right in pairwise(chunks))
    assert chunks[0].start_sample <= track.speech[0][0] and chunks[-1].end_sample >= track.speech[-1][1]
    pauses = [(end, start) for (_, end), (start, _) in pairwise(track.speech)]
    for cut in (chunk.start_sample for chunk in chunks[1:]):
        assert any(end - WINDOW <= cut <= start + WINDOW for end, start in pauses), cut / SAMPLE_RATE


@pytest.mark.integration
@pytest.mark.parametrize("max_segment_s", [30.0, 8.0])
def test_block_size_does_not_change_the_spans(network, mixed_track, max_segment_s):
    settings = VadSettings(max_segment_s=max_segment_s)
    whole = spans_of(segment(network, mixed_track.samples, settings=settings))
    assert len(whole) >= 9
    assert max(end - start for start, end in whole) <= max_segment_s * SAMPLE_RATE
    for block in (SAMPLE_RATE, 7 * SAMPLE_RATE + 123, 30 * SAMPLE_RATE):
        spans = spans_of(segment(network, mixed_track.samples, block, settings))
        assert len(spans) == len(whole)
        assert np.abs(np.array(spans) - np.array(whole)).max() <= WINDOW, block


@pytest.mark.integration
def test_silence_and_very_short_input_give_no_chunks(network):
    noise = build_track([10.0], seed=3, noise_dbfs=-50).samples
    assert segment(network, np.zeros(10 * SAMPLE_RATE, np.float32)) == []
    assert segment(network, noise) == []
    assert segment(network, noise[:100]) == []
    assert segment(network, np.zeros(0, np.float32)) == []
    with pytest.raises(ValueError, match="mono"):
        SpeechSegmenter(network, VadSettings()).push(np.zeros((2, 100), np.float32))


@pytest.mark.integration
def test_memory_stays_bounded_while_streaming(network):
    track = make_speech_track(600, 0.25, seed=2)  # 38 MB of samples
    segmenter = SpeechSegmenter(network, VadSettings())
    block = 30 * SAMPLE_RATE
    tracemalloc.start()
    try:
        spoken = 0
        for start in range(0, len(track.samples), block):
            spoken += sum(
                len(chunk.samples) for chunk in segmenter.push(track.samples[start : start + block])
            )
        spoken += sum(len(chunk.samples) for chunk in segmenter.finish())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spoken > 0.6 * len(track.samples)
    assert peak < 24e6  # a block, ~65 s waiting to be scored and their copies, the open span: ~18 MB
