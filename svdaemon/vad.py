"""Speech spans from a stream of 16 kHz mono samples, with silero-vad.

The model scores each 512-sample window (32 ms). Scoring one window at a time runs at ~50x realtime on two
cores, so the stream is cut into rows of ROW_WINDOWS windows that run side by side as one batch, each row with
its own LSTM state. A row that started cold would disagree with the sequential path for its first windows
(mean |difference| 0.30 on the first window, 0.11 on the second), so each row first runs WARMUP_WINDOWS of the
audio before it, whose probabilities are dropped; after that the difference is the model's own sensitivity to
where it started (mean ~0.02, as large when the sequential path itself starts elsewhere). The file's first row
starts from the zero state, exactly as the sequential path does. One `VadNetwork` serves every stream: rows of
files segmented at once on different threads are merged into the same model call, on the engine's device.

On the probabilities, the span rules are pure functions (`speech_runs`, `merge_runs`, `cut_points`, `settle`):
hysteresis like silero's `get_speech_timestamps`, gaps shorter than `min_silence_s` merged, runs shorter than
MIN_SPEECH_S dropped, `pad_s` added on both sides, and spans longer than `max_segment_s` cut at their quietest
window. `SpeechSegmenter` keeps only the open span and enough silence to decide it, so memory holds one block,
the audio waiting to be scored (up to MAX_ROWS rows, ~65 s) and the open span (at most `max_segment_s`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from dataclasses import dataclass, field
from itertools import pairwise
from typing import NamedTuple, Protocol

import numpy as np
import torch

# Importing silero_vad sets torch.set_num_threads(1); the daemon sets its own count after all imports.
from silero_vad import load_silero_vad

from svdaemon.cpu_threads import torch_threads
from svdaemon.errors import EnvironmentFault

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # samples per speech probability: silero's window at 16 kHz
WARMUP_WINDOWS = 4  # audio a row runs before its own windows, to settle its state
ROW_WINDOWS = 32  # windows per row: long enough that warm-up costs 1/8 extra
MAX_ROWS = 64  # rows a stream sends per model call; it scores once this many rows are ready
MIN_SPEECH_S = 0.25  # shorter runs are clicks, not speech (silero's default)
THRESHOLD = 0.5
NEGATIVE_MARGIN = 0.15  # leave speech only below threshold - margin (silero's hysteresis)


def load_vad_model() -> torch.jit.ScriptModule:
    """silero-vad's TorchScript model (its weights ship in the package); load once, reuse for every file."""
    with warnings.catch_warnings():  # silero falls back to importlib.resources.path, deprecated since 3.11
        warnings.filterwarnings("ignore", "path is deprecated", DeprecationWarning)
        return load_silero_vad(onnx=False)


class VadSettingsLike(Protocol):
    min_silence_s: float
    max_segment_s: float
    pad_s: float


@dataclass(frozen=True)
class SpanRules:
    """The span settings in the units the rules work in: windows and samples."""

    threshold: float
    negative_threshold: float
    min_gap_windows: int  # a gap this long or longer separates spans; shorter gaps are merged
    min_speech_samples: int
    pad_samples: int
    max_samples: int

    @classmethod
    def of(cls, settings: VadSettingsLike, threshold: float = THRESHOLD) -> SpanRules:
        """Padding is capped at half the minimum gap, so padded neighbours never overlap.

        A max_segment_s under a second would leave no room to look for a quiet place to cut.
        """
        if settings.max_segment_s < 1.0 or settings.min_silence_s < 0 or settings.pad_s < 0:
            raise ValueError(f"unusable VAD settings: {settings}")
        return cls(
            threshold=threshold,
            negative_threshold=max(threshold - NEGATIVE_MARGIN, 0.01),
            min_gap_windows=max(1, int(np.ceil(settings.min_silence_s * SAMPLE_RATE / WINDOW))),
            min_speech_samples=round(MIN_SPEECH_S * SAMPLE_RATE),
            pad_samples=round(min(settings.pad_s, settings.min_silence_s / 2) * SAMPLE_RATE),
            max_samples=round(settings.max_segment_s * SAMPLE_RATE),
        )


@dataclass(frozen=True, eq=False)
class SpeechChunk:
    """A piece of speech: its samples and where it starts in the file."""

    start_sample: int
    samples: np.ndarray = field(repr=False)

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE


@dataclass(frozen=True)
class Pending:
    """What is not decided yet: probabilities from window `origin` on, nothing emitted before `floor`."""

    origin: int = 0  # window index
    in_speech: bool = False  # a span cut at `origin` goes on there
    floor: int = 0  # sample index: end of the last emitted span


# ---- span rules: pure functions over probability arrays ------------------------------------------------


def speech_runs(
    probs: np.ndarray, threshold: float, negative_threshold: float, in_speech: bool = False
) -> list[tuple[int, int]]:
    """[start, end) window runs of speech: entered at >= threshold, left below negative_threshold.

    A run still open at the end of `probs` ends there. With `in_speech`, the first run starts at 0 even if
    it ends at once (a span cut there goes on, however quiet the cut).
    """
    events = np.where(probs >= threshold, 1, np.where(probs < negative_threshold, 0, -1))
    last_event = np.maximum.accumulate(np.where(events >= 0, np.arange(len(probs)), -1))
    state = np.where(last_event >= 0, events[last_event], int(in_speech))
    edges = np.diff(np.concatenate(([0, int(in_speech)], state, [0])))
    starts = np.maximum(np.flatnonzero(edges == 1) - 1, 0)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(start), int(end)) for start, end in zip(starts, ends, strict=True)]


def merge_runs(runs: list[tuple[int, int]], min_gap: int) -> list[tuple[int, int]]:
    """Join runs separated by fewer than `min_gap` windows."""
    merged: list[tuple[int, int]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def cut_points(
    first: int, stop: int, probs: np.ndarray, energy: np.ndarray, origin: int, max_samples: int
) -> list[int]:
    """Sample positions that cut [first, stop) into pieces of at most `max_samples`.

    Each cut is at the start of the quietest window in the latter half of the piece it ends: lowest
    probability (rounded to 0.01, below which the model's output is noise), then lowest energy.
    `probs`/`energy` hold one value per window from window `origin` on.
    """
    cuts = []
    while stop - first > max_samples:
        low = max(-(-(first + max_samples // 2) // WINDOW), first // WINDOW + 1, origin)
        high = (first + max_samples) // WINDOW
        scope = slice(low - origin, high - origin + 1)
        quietest = np.lexsort((energy[scope], np.round(probs[scope], 2)))[0]
        first = (low + int(quietest)) * WINDOW
        cuts.append(first)
    return cuts


def settle(
    probs: np.ndarray, energy: np.ndarray, pending: Pending, rules: SpanRules, audio_end: int | None = None
) -> tuple[list[tuple[int, int]], Pending]:
    """The [start, end) sample spans the probabilities so far decide, and what stays pending.

    `probs`/`energy` hold one value per window from `pending.origin` on. `audio_end` is the audio's length
    once it has ended (None while more may come). A span is decided once `min_gap_windows` of silence follow
    it (no merge can reach it any more) or the audio ends; an open span longer than `max_samples` gives up
    its decided pieces at once. Called again with the kept probabilities and more, it decides the same spans
    it would have decided on all probabilities at once.
    """
    runs = speech_runs(probs, rules.threshold, rules.negative_threshold, pending.in_speech)
    runs = merge_runs(runs, rules.min_gap_windows)
    spans: list[tuple[int, int]] = []
    floor = pending.floor
    for index, (first_window, end_window) in enumerate(runs):
        continues_cut = pending.in_speech and index == 0
        start = (pending.origin + first_window) * WINDOW
        end = (pending.origin + end_window) * WINDOW
        if audio_end is not None:
            end = min(end, audio_end)
        decided = audio_end is not None or len(probs) - end_window >= rules.min_gap_windows
        if decided and not continues_cut and end - start < rules.min_speech_samples:
            continue
        first = max(start - rules.pad_samples, floor)
        if not decided:
            cuts = cut_points(first, end, probs, energy, pending.origin, rules.max_samples)
            spans += pairwise([first, *cuts])
            if cuts:
                return spans, Pending(cuts[-1] // WINDOW, True, cuts[-1])
            return spans, Pending(pending.origin + first_window, continues_cut, floor)
        last = end + rules.pad_samples if audio_end is None else min(end + rules.pad_samples, audio_end)
        cuts = cut_points(first, last, probs, energy, pending.origin, rules.max_samples)
        spans += pairwise([first, *cuts, last])
        floor = last
    return spans, Pending(pending.origin + len(probs), False, floor)


# ---- the model layer -----------------------------------------------------------------------------------


class Scored(NamedTuple):
    probs: np.ndarray  # one speech probability per window
    energy: np.ndarray  # mean square of each window
    samples: np.ndarray  # the samples those windows cover (the last window may be partial)


class VadNetwork:
    """silero's 16 kHz network on one device, shared by every stream being segmented.

    Streams call `score` from their own threads; calls that arrive while one runs are merged into the next
    model call (one batch of rows from many files), so the network runs on big batches without any stream
    waiting on a timer. On a GPU a failing call moves the network to the CPU with a warning: VAD must not cost
    the file. Uses the network directly with state tensors of its own (instead of silero's wrapper, which keeps
    one state inside the shared model): rows then start from a chosen state and two files never share state.
    """

    def __init__(
        self, model: torch.jit.ScriptModule, device: str = "cpu", threads: int | None = None
    ) -> None:
        self._network = model._model
        self.threads = threads  # CPU threads of its own (`cpu_threads`); None: the calling thread's count
        self.context = int(self._network.context_size_samples)
        self._device = "cpu"
        self._failed_on: str | None = None  # the device VAD failed on, kept off until another is asked for
        self._waiting: list[_RowRequest] = []
        self._waiting_lock = threading.Lock()
        self._running = threading.Lock()  # one model call at a time; its holder takes everything waiting
        self.calls = 0  # model calls so far, and the rows they scored: rows / calls is the batch achieved
        self.rows = 0
        self.move_to(device)

    @property
    def device(self) -> str:
        return self._device

    def move_to(self, device: str) -> None:
        """Run on `device` from the next call on (the engine's device while its model is loaded); a device
        where VAD failed is not used again, unless another was asked for in between."""
        if device in (self._device, self._failed_on):
            return  # the common case, without waiting for a running call
        with self._running:
            self._failed_on = None
            if device != self._device:
                self._network.to(torch.device(device))
                self._device = device
                log.debug("VAD runs on %s", device)

    def score(self, rows: np.ndarray, cold_first_row: bool) -> np.ndarray:
        """Probabilities of each row's ROW_WINDOWS windows, row after row; a row is its lead then its windows.

        `cold_first_row`: the first row starts from the zero state after its warm-up (a file's first window).
        """
        request = _RowRequest(rows, cold_first_row)
        with self._waiting_lock:
            self._waiting.append(request)
        with self._running:
            if request.probs is None and request.error is None:  # no earlier call took it along
                with self._waiting_lock:
                    batch, self._waiting = self._waiting, []
                try:
                    self._run(batch)
                except BaseException as error:  # every request taken along gets an answer, this one too
                    for waiting in batch:
                        if waiting.probs is None:
                            waiting.error = error
        if request.error is not None:
            raise request.error
        return request.probs

    def _run(self, batch: list[_RowRequest]) -> None:
        rows = np.concatenate([request.rows for request in batch])
        self.calls += 1
        self.rows += len(rows)
        starts = np.cumsum([0] + [len(request.rows) for request in batch[:-1]])
        cold = [int(start) for start, request in zip(starts, batch, strict=True) if request.cold_first_row]
        try:
            probs = self._run_rows(rows, cold)
        except RuntimeError as error:
            if self._device == "cpu":
                raise
            probs = self._run_rows_on_the_cpu(rows, cold, error)
        for start, request in zip(starts, batch, strict=True):
            request.probs = probs[start : start + len(request.rows)].reshape(-1)

    def _run_rows_on_the_cpu(self, rows: np.ndarray, cold: list[int], error: RuntimeError) -> np.ndarray:
        """After the GPU failed: the network back to the CPU, where it stays; a card that will not even give
        the weights back is an environment fault (the files are retried, not counted against)."""
        failed, self._failed_on, self._device = self._device, self._device, "cpu"
        log.warning("VAD on %s failed (%s); it runs on the CPU instead", failed, error)
        try:
            self._network.to(torch.device("cpu"))
        except RuntimeError as moving:
            raise EnvironmentFault(
                f"VAD failed on {failed} ({error}) and could not leave it ({moving})"
            ) from error
        return self._run_rows(rows, cold)

    def _run_rows(self, rows: np.ndarray, cold: list[int]) -> np.ndarray:
        """[rows, ROW_WINDOWS] probabilities; only ids-sized results come back from the device."""
        device = torch.device(self._device)
        batch = torch.from_numpy(rows).to(device)
        state = torch.zeros(0, device=device)  # silero's network reads an empty state as zeros
        probs = []
        own = self.threads is not None and device.type == "cpu"
        threads = torch_threads(self.threads) if own else contextlib.nullcontext()
        with torch.inference_mode(), threads:
            for step in range(WARMUP_WINDOWS + ROW_WINDOWS):
                if step == WARMUP_WINDOWS and cold:
                    state[:, cold] = 0
                offset = step * WINDOW
                prob, state = self._network(batch[:, offset : offset + self.context + WINDOW], state)
                if step >= WARMUP_WINDOWS:
                    probs.append(prob[:, 0])
            return torch.stack(probs, dim=1).cpu().numpy()


@dataclass(eq=False)
class _RowRequest:
    rows: np.ndarray
    cold_first_row: bool
    probs: np.ndarray | None = None
    error: BaseException | None = None


class WindowScorer:
    """Speech probabilities of one sample stream, window by window, many rows per model call."""

    def __init__(self, network: VadNetwork) -> None:
        self._network = network
        self._lead = WARMUP_WINDOWS * WINDOW + network.context  # samples a row needs before its first window
        self._history = np.zeros(self._lead, np.float32)  # the samples before the first unscored one
        self._unscored = np.zeros(0, np.float32)
        self._at_file_start = True
        self.received = 0

    def push(self, block: np.ndarray) -> Scored:
        """Score once MAX_ROWS full rows are waiting; the rest waits for more audio."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"audio blocks must be mono (one dimension), got shape {block.shape}")
        self.received += len(block)
        self._unscored = np.concatenate([self._unscored, block])
        rows = len(self._unscored) // (ROW_WINDOWS * WINDOW)
        return self._score(rows * ROW_WINDOWS * WINDOW if rows >= MAX_ROWS else 0)

    def finish(self) -> Scored:
        """Score everything left, the last window padded with zeros (as silero does)."""
        return self._score(len(self._unscored))

    def _score(self, length: int) -> Scored:
        if length == 0:
            return Scored(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        row_samples = ROW_WINDOWS * WINDOW
        windows = -(-length // WINDOW)
        rows = -(-windows // ROW_WINDOWS)
        audio = self._unscored[:length]
        padded = np.concatenate([self._history, audio, np.zeros(rows * row_samples - length, np.float32)])
        starts = np.lib.stride_tricks.sliding_window_view(padded, self._lead + row_samples)[::row_samples]
        probs = [
            self._network.score(
                np.array(starts[first : first + MAX_ROWS]), first == 0 and self._at_file_start
            )
            for first in range(0, rows, MAX_ROWS)
        ]
        scored_windows = padded[self._lead : self._lead + windows * WINDOW].reshape(windows, WINDOW)
        self._history = padded[length : length + self._lead].copy()
        self._unscored = self._unscored[length:].copy()
        self._at_file_start = False
        return Scored(
            np.concatenate(probs)[:windows],
            np.square(scored_windows).mean(axis=1),
            audio,
        )


# ---- the stream ----------------------------------------------------------------------------------------


class SpeechSegmenter:
    """Speech chunks of one file: `push` each decoded block, then `finish`; silence is dropped."""

    def __init__(self, network: VadNetwork, settings: VadSettingsLike, threshold: float = THRESHOLD) -> None:
        self._rules = SpanRules.of(settings, threshold)
        self._scorer = WindowScorer(network)
        self._pending = Pending()
        self._probs = np.zeros(0, np.float32)  # from window self._pending.origin on
        self._energy = np.zeros(0, np.float32)
        self._samples = np.zeros(0, np.float32)  # scored samples from self._samples_start on
        self._samples_start = 0

    def push(self, block: np.ndarray) -> list[SpeechChunk]:
        """The chunks this block decides: often none, as a span is emitted once closed or too long."""
        scored = self._scorer.push(block)
        return self._advance(scored, None) if len(scored.probs) else []

    def finish(self) -> list[SpeechChunk]:
        """The remaining chunks, the open span closed at the end of the audio."""
        return self._advance(self._scorer.finish(), self._scorer.received)

    def _advance(self, scored: Scored, audio_end: int | None) -> list[SpeechChunk]:
        probs = np.concatenate([self._probs, scored.probs])
        energy = np.concatenate([self._energy, scored.energy])
        samples = np.concatenate([self._samples, scored.samples])
        spans, pending = settle(probs, energy, self._pending, self._rules, audio_end)
        chunks = [
            SpeechChunk(start, samples[start - self._samples_start : end - self._samples_start].copy())
            for start, end in spans
        ]
        kept_windows = pending.origin - self._pending.origin
        keep_from = max(pending.floor, pending.origin * WINDOW - self._rules.pad_samples)
        self._probs, self._energy = probs[kept_windows:].copy(), energy[kept_windows:].copy()
        self._samples = samples[keep_from - self._samples_start :].copy()
        self._samples_start, self._pending = keep_from, pending
        return chunks
