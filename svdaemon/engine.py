"""SenseVoice Small through FunASR's loader, run with svdaemon's own batching.

FunASR builds the model, tokenizer and feature frontend; svdaemon runs those modules itself so that it
controls what FunASR does not: the device rule (never a silent CPU fallback), proof that every weight came
from the checkpoint, length-sorted padded batches, half precision with the fragile steps in fp32, and CTC
decoding without the 25055-way log-softmax. For the same audio the token ids equal those of
`SenseVoiceSmall.inference` run on each segment alone (tests/test_engine.py checks it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from svdaemon.config import effective_precision
from svdaemon.cpu_threads import engine_threads, torch_threads
from svdaemon.errors import DeviceLost, EnvironmentFault, StartupError
from svdaemon.features import BatchedFeatures, FrontendShape
from svdaemon.memory import (
    MB,
    BatchLimit,
    BudgetSettings,
    ShapeSample,
    activation_allowance,
    budget_bytes,
    fit_cost_model,
    halves,
)
from svdaemon.transcript import Segment, Token

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME_S = 0.06  # one encoder frame: 10 ms fbank shift x LFR stride 6
QUERY_FRAMES = 4  # language, event, emotion and text-norm queries prepended to the features
LANGUAGE_QUERY = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
TEXTNORM_QUERY = {True: 14, False: 15}  # withitn, woitn
EVENT_EMOTION_QUERY = (1, 2)
BLANK_ID = 0
ATTENTION_FRAMES = 3000  # length at which a frame's attention costs as much as its linear layers
# Measured on a 2-core x86 CPU with the full-size model (docs/benchmarks.md): a call costs about as much
# as 100 frames of work, and per-frame cost is lowest at 1200-2400 padded frames per call (beyond, the
# activations leave the cache).
BATCH_CALL_COST_FRAMES = 100.0
CPU_BATCH_MAX_FRAMES = 2400
CUDA_BATCH_MAX_FRAMES = 8000  # stands in on CUDA only when batch_max_frames is forced
# (items, encoder frames) measured at load on CUDA to fit the cost model: two lengths at one size tell the
# quadratic term, two sizes at one length the linear one; the longest is a 90 s segment.
COST_SHAPES = ((1, 250), (4, 250), (2, 750), (1, 1500))
MIN_SPLIT_S = 1.0  # after an out-of-memory error a lone piece is split, but not below this
REQUIRED_FILES = ("config.yaml", "model.pt", "am.mvn")

_TAG = re.compile(r"^<\|(.+)\|>$")
_EMOTIONS = {"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"}
_EVENTS = {"Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK"}
_ITN = {"withitn": True, "woitn": False}


class SpeechLike(Protocol):
    """A piece of 16 kHz mono float32 audio and where it starts in its file."""

    @property
    def start_s(self) -> float: ...

    @property
    def samples(self) -> np.ndarray: ...


@dataclass(frozen=True)
class EngineSettings:
    model_dir: Path
    model_name: str  # what the user asked for (hub id or folder), recorded in the JSON sidecar
    device: str = "auto"
    precision: str = "fp16"
    language: str = "auto"
    use_itn: bool = True
    batch_max_frames: int | None = None  # padded encoder frames per call; None: the device's default
    threads: int | None = None
    half_max_rel_error: float = 0.05  # above this, half precision falls back to fp32 on the device
    vram: BudgetSettings = field(default_factory=BudgetSettings)


@dataclass(frozen=True)
class CtcToken:
    """One token of the collapsed CTC path with its first and last encoder frame."""

    token_id: int
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class Recognition:
    """The raw result for one piece of audio, before tags are split off."""

    tokens: tuple[CtcToken, ...]

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]


@dataclass(frozen=True)
class PrecisionCheck:
    """Half precision against fp32 on the probe batch at load: the logits' error and the argmax agreement.

    With random test weights the top two logits are often nearly equal, so agreement is reported only;
    non-finite logits or a relative error above the limit are what make the engine fall back to fp32.
    """

    precision: str
    max_rel_error: float
    token_agreement: float
    finite: bool

    def safe(self, limit: float) -> bool:
        return self.finite and self.max_rel_error <= limit


def compare_logits(precision: str, half: Sequence, full: Sequence) -> PrecisionCheck:
    """Per item, max |half − fp32| over max |fp32|; the worst item counts."""
    import torch

    finite = all(bool(torch.isfinite(h).all()) for h in half)
    errors = [
        float((h - f).abs().max() / f.abs().max().clamp(min=1e-12)) for h, f in zip(half, full, strict=True)
    ]
    agree = sum(int((h.argmax(-1) == f.argmax(-1)).sum()) for h, f in zip(half, full, strict=True))
    frames = sum(f.shape[0] for f in full)
    return PrecisionCheck(precision, max(errors) if finite else float("inf"), agree / frames, finite)


def probe_waves() -> list[np.ndarray]:
    """A fixed probe batch of three lengths: a rising tone over soft noise, like speech in level and band."""
    rng = np.random.default_rng(20261125)
    waves = []
    for seconds in (1.0, 2.5, 4.0):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.1 * np.sin(2 * np.pi * (150 + 400 * t / seconds) * t)
        waves.append((tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    return waves


@dataclass(frozen=True)
class VramReading:
    """svdaemon's reserved VRAM and the card's free and total memory, in MB."""

    used_mb: int
    free_mb: int
    total_mb: int


def next_device(failed: str, free_by_gpu: Sequence[int], fallback_to_cpu: bool) -> str | None:
    """Where to go on after `failed` stopped working: the other GPU with most free memory, else the CPU
    when `fallback_to_cpu`, else None (pause)."""
    others = [(free, index) for index, free in enumerate(free_by_gpu) if f"cuda:{index}" != failed]
    if others:
        return f"cuda:{max(others)[1]}"
    return "cpu" if fallback_to_cpu else None


def resolve_device(spec: str) -> str:
    """Apply the device rule: `cuda*` means CUDA or a start-up error; `auto` prefers the freest GPU."""
    import torch

    if spec == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if spec == "auto":
        if not count:
            log.warning("device: auto — no CUDA GPU found, running on the CPU (slow)")
            return "cpu"
        free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
        return f"cuda:{int(np.argmax(free))}"
    if not spec.startswith("cuda"):
        raise StartupError(f'device: "{spec}" — expected auto, cpu, cuda or cuda:N')
    if not available:
        raise StartupError(
            f'device: "{spec}" — CUDA is not available (torch {torch.__version__}, '
            f"CUDA build {torch.version.cuda or 'none'}); use device: auto or cpu"
        )
    index = int(spec.partition(":")[2] or 0)
    if index >= count:
        found = ", ".join(f"cuda:{i}" for i in range(count))
        raise StartupError(f'device: "{spec}" — only {count} GPU{"s" if count > 1 else ""} ({found}) found')
    return f"cuda:{index}"


def check_model_dir(directory: Path) -> None:
    """Refuse a folder that FunASR would load incompletely or fill with random weights."""
    if not directory.is_dir():
        raise StartupError(f"model: {directory} is not a folder")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise StartupError(
            f"model: {directory} is not a SenseVoice model folder (missing {', '.join(missing)})"
        )


def verify_weights(model, checkpoint: Path) -> None:
    """Fail unless every parameter and buffer equals the checkpoint's (FunASR skips mismatches quietly)."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise StartupError(f"model: {checkpoint} cannot be read ({exc.__class__.__name__}: {exc})") from exc
    for nesting in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(nesting), dict):
            state = state[nesting]
    wrong = []
    own = model.state_dict()
    for name, tensor in own.items():
        source = state.get(name, state.get(f"module.{name}"))
        if (
            source is None
            or source.shape != tensor.shape
            or not torch.equal(source.to(tensor.dtype), tensor.detach().cpu())
        ):
            wrong.append(name)
    if wrong:
        raise StartupError(
            f"model: {checkpoint}: {len(wrong)} of {len(own)} weights did not load from the checkpoint "
            f"(first: {', '.join(wrong[:3])}); the folder does not hold this model's weights"
        )


def collapse_ctc(frame_ids: np.ndarray) -> list[CtcToken]:
    """Greedy CTC: merge runs of one id, drop blanks, keep each token's frame span."""
    if frame_ids.size == 0:
        return []
    starts = np.flatnonzero(np.diff(frame_ids, prepend=-1))
    ends = np.append(starts[1:], frame_ids.size) - 1
    return [
        CtcToken(int(frame_ids[s]), int(s), int(e))
        for s, e in zip(starts, ends, strict=True)
        if frame_ids[s] != BLANK_ID
    ]


def encoder_frames(num_samples: int) -> int:
    """Encoder frames for a waveform: Kaldi fbank frames (25 ms window, 10 ms shift), LFR stride 6, queries."""
    fbank = 1 + (num_samples - 400) // 160 if num_samples >= 400 else 1
    return -(-fbank // 6) + QUERY_FRAMES


def samples_for_frames(frames: int) -> int:
    """The shortest waveform with `frames` encoder frames (queries included)."""
    return 400 + 160 * (6 * (frames - QUERY_FRAMES) - 6)


def quietest_cut(samples: np.ndarray, window: int = SAMPLE_RATE // 10) -> int:
    """Where to split a piece in two: the middle of its quietest 100 ms window in the middle third."""
    third = len(samples) // 3
    middle = samples[third : 2 * third]
    windows = len(middle) // window
    if windows == 0:
        return len(samples) // 2
    energy = np.square(middle[: windows * window].reshape(windows, window)).sum(axis=1)
    return third + int(np.argmin(energy)) * window + window // 2


def joined(head: Recognition, tail: Recognition, head_frames: int) -> Recognition:
    """One recognition from the two halves of a split piece; the tail's frames move after the head's.

    The tail's own query frames (its tags, which the head already has) are dropped.
    """
    moved = tuple(
        CtcToken(t.token_id, t.first_frame + head_frames, t.last_frame + head_frames)
        for t in tail.tokens
        if t.first_frame >= QUERY_FRAMES
    )
    return Recognition(head.tokens + moved)


def plan_batches(
    lengths: Sequence[int],
    fits: Callable[[int, int], bool],
    call_cost_frames: float = BATCH_CALL_COST_FRAMES,
) -> list[list[int]]:
    """Group item indices into batches of similar length, longest first, at the least padded work.

    Every item in a batch is padded to its longest, so a greedy fill that puts a 10 s piece beside 1 s
    ones triples the work. Over the items sorted by length, a dynamic programme picks the contiguous
    groups that minimise padded frames (attention grows with the square of the length) plus a fixed
    cost per encoder call, each batch a shape (items, longest) that `fits` allows; an item alone always goes.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    longest = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end - 1, -1, -1):
            size, frames = end - start, longest[start]
            if size > 1 and not fits(size, frames):
                break
            cost = best[start] + size * frames * (1 + frames / ATTENTION_FRAMES) + call_cost_frames
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[int]] = []
    end = len(order)
    while end:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def split_tags(pieces: Sequence[str]) -> tuple[dict[str, str | bool], int]:
    """Read SenseVoice's leading tags (language, emotion, event, ITN) and say how many tokens they take."""
    tags: dict[str, str | bool] = {}
    count = 0
    for piece in pieces[:4]:
        match = _TAG.match(piece)
        if not match:
            break
        name = match.group(1)
        if name in _EMOTIONS:
            tags["emotion"] = "unknown" if name == "EMO_UNKNOWN" else name.lower()
        elif name in _EVENTS:
            tags["event"] = "unknown" if name == "Event_UNK" else name.lower()
        elif name in _ITN:
            tags["itn"] = _ITN[name]
        else:
            tags["language"] = name.lower()
        count += 1
    return tags, count


def is_special(sp, token_id: int) -> bool:
    """A piece that marks rather than spells: SentencePiece's control pieces (`<s>`, `</s>`), `<unk>`, unused
    ids and SenseVoice's `<|...|>` tags. Its surface form is markup, so it never becomes text."""
    return (
        sp.IsControl(token_id)
        or sp.IsUnknown(token_id)
        or sp.IsUnused(token_id)
        or _TAG.match(sp.IdToPiece(token_id)) is not None
    )


def build_segment(sp, piece: SpeechLike, recognition: Recognition, default_itn: bool) -> Segment:
    """The Segment of one recognised piece: its leading tags read, every special piece dropped.

    Special pieces are dropped here, where the text is made, so neither `Segment.text` nor its tokens ever
    carry one and no sidecar format has to strip them.
    """
    tags, tag_count = split_tags([sp.IdToPiece(token.token_id) for token in recognition.tokens[:4]])
    body = [token for token in recognition.tokens[tag_count:] if not is_special(sp, token.token_id)]
    duration_s = len(piece.samples) / SAMPLE_RATE
    tokens = []
    for text, positions in _piece_texts(sp, [token.token_id for token in body]):
        first = body[positions[0]].first_frame - QUERY_FRAMES
        last = body[positions[-1]].last_frame - QUERY_FRAMES
        start = min(max(first * FRAME_S - FRAME_S / 2, 0.0), duration_s)
        end = min(max((last + 1) * FRAME_S - FRAME_S / 2, start), duration_s)
        tokens.append(Token(text, round(piece.start_s + start, 3), round(piece.start_s + end, 3)))
    return Segment(
        start_s=round(piece.start_s, 3),
        end_s=round(piece.start_s + duration_s, 3),
        text=sp.DecodeIds([token.token_id for token in body]).strip(),
        language=str(tags.get("language", "")),
        emotion=str(tags.get("emotion", "")),
        event=str(tags.get("event", "")),
        itn=bool(tags.get("itn", default_itn)),
        tokens=tuple(tokens),
    )


def _piece_texts(sp, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """Surface text per token; byte-fallback pieces are joined until they form whole characters."""
    out: list[tuple[str, list[int]]] = []
    pending: list[int] = []
    for position, token_id in enumerate(ids):
        if sp.IsByte(token_id):
            pending.append(position)
            text = sp.DecodeIds([ids[p] for p in pending])
            if "\ufffd" not in text:
                out.append((text, pending))
                pending = []
            continue
        out.append((sp.IdToPiece(token_id).replace("\u2581", " "), [position]))
    if pending:
        out.append((sp.DecodeIds([ids[p] for p in pending]), pending))
    return out


class SenseVoiceEngine:
    """A loaded SenseVoice Small on one device; `recognize` turns speech pieces into Segments."""

    def __init__(self, settings: EngineSettings) -> None:

        check_model_dir(settings.model_dir)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.threads = engine_threads(settings.threads)  # torch's CPU threads at every engine call
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):  # FunASR prints banners and notices to stdout
            from funasr import AutoModel

            try:
                auto = AutoModel(
                    model=str(settings.model_dir),
                    device=self.device,
                    ncpu=self.threads,
                    disable_update=True,
                    disable_pbar=True,
                    log_level="ERROR",
                )
            except Exception as exc:
                raise StartupError(f"model: {settings.model_dir} cannot be loaded by FunASR: {exc}") from exc
        if captured.getvalue().strip():
            log.debug("FunASR said: %s", captured.getvalue().strip())
        self.model = auto.model
        self.model.eval()
        verify_weights(self.model, Path(auto.kwargs["init_param"]))
        self.frontend = auto.kwargs["frontend"]
        self.frontend.dither = 0.0  # SenseVoice's config leaves dither at 1.0: random features each call
        self.tokenizer = auto.kwargs["tokenizer"]
        self._sp = self.tokenizer.sp
        self.loaded = True
        self._prepare_on(self.device)
        log.info("SenseVoice loaded from %s on %s (%s)", settings.model_dir, self.device, self.precision)

    # ---- the device ------------------------------------------------------------------------------------

    def _prepare_on(self, device: str) -> None:
        """Everything that depends on the device: features, precision (probed) and the batch limit."""
        import torch

        settings = self.settings
        self.device = device
        self.precision = effective_precision(device, settings.precision)
        self._compute_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
            self.precision
        ]
        self.batch_limit = BatchLimit(
            max_frames=settings.batch_max_frames
            or (CPU_BATCH_MAX_FRAMES if device == "cpu" else CUDA_BATCH_MAX_FRAMES)
        )
        self._place_features(device)
        self.precision_check: PrecisionCheck | None = None
        self.notice: str | None = None
        if self.precision != "fp32":
            self._check_half_precision(settings.half_max_rel_error)
        if device != "cpu" and settings.batch_max_frames is None:
            self.batch_limit = self._measure_batch_limit(settings.vram)

    def move_to(self, spec: str) -> None:
        """Go on on another device (`svdaemon device NAME`, or a GPU that failed); StartupError if it cannot."""
        target = resolve_device(spec)
        if target == self.device and self.loaded:
            return
        previous = self.device
        self.model.to(target)
        self.loaded = True
        self._release(previous)
        self._prepare_on(target)
        log.info("SenseVoice moved from %s to %s (%s)", previous, target, self.precision)

    def vram(self) -> VramReading | None:
        """svdaemon's reserved memory and the card's free and total, in MB; None on the CPU."""
        if self.device == "cpu":
            return None
        import torch

        device = torch.device(self.device)
        free, total = torch.cuda.mem_get_info(device)
        return VramReading(torch.cuda.memory_reserved(device) // MB, free // MB, total // MB)

    def release_cache(self) -> None:
        """Give the allocator's cached blocks back to the card, keeping the weights (the queue drained)."""
        self._release(self.device)

    def unload(self) -> None:
        """Move the weights to host memory so that svdaemon holds no VRAM (idle); `ensure_loaded` undoes it."""
        if self.device == "cpu" or not self.loaded:
            return
        self.model.to("cpu")
        self._batched_features = None  # its mel banks and CMVN live on the card too
        self.loaded = False
        self._release(self.device)
        log.info("SenseVoice unloaded from %s after idling", self.device)

    def ensure_loaded(self) -> None:
        if not self.loaded:
            self.model.to(self.device)
            self._place_features(self.device)
            self.loaded = True
            log.info("SenseVoice loaded again on %s", self.device)

    def _place_features(self, device: str) -> None:
        shape = FrontendShape.of(self.frontend)
        self._batched_features = shape and BatchedFeatures(shape, self.frontend.cmvn, device)

    @staticmethod
    def _release(device: str) -> None:
        if device != "cpu":
            import torch

            with torch.cuda.device(torch.device(device)):
                torch.cuda.empty_cache()

    def _check_half_precision(self, limit: float) -> None:
        """Run the probe batch in half and in fp32; fall back to fp32 on this device when half is unsafe."""
        import torch

        waves = probe_waves()
        half = [logits.float() for logits in self.ctc_logits(waves)]
        asked, self._compute_dtype = self._compute_dtype, torch.float32
        full = list(self.ctc_logits(waves))
        check = compare_logits(self.precision, half, full)
        self.precision_check = check
        if check.safe(limit):
            self._compute_dtype = asked
            log.info(
                "%s on %s: logits within %.2g of fp32 (limit %.2g), %.1f%% of frames agree",
                check.precision,
                self.device,
                check.max_rel_error,
                limit,
                100 * check.token_agreement,
            )
            return
        cause = (
            "non-finite logits" if not check.finite else f"logits off by {check.max_rel_error:.2g} of fp32"
        )
        self.notice = (
            f"{check.precision} on {self.device} is unsafe for this model ({cause}, limit {limit:.2g}); "
            "running in fp32"
        )
        log.warning("%s", self.notice)
        self.precision = "fp32"

    def _measure_batch_limit(self, vram: BudgetSettings) -> BatchLimit:
        """Fit the activation cost of a few batch shapes on this device and set it against the budget."""
        import torch

        device = torch.device(self.device)
        weights = torch.cuda.memory_allocated(device)
        free, _ = torch.cuda.mem_get_info(device)
        allowance = activation_allowance(
            budget_bytes(vram, free, held_bytes=torch.cuda.memory_reserved(device)), weights, self.device
        )
        rng = np.random.default_rng(0)
        samples = []
        for batch, frames in COST_SHAPES:
            waves = [0.05 * rng.standard_normal(samples_for_frames(frames)).astype(np.float32)] * batch
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            self.recognize_raw(waves)
            samples.append(ShapeSample(batch, frames, torch.cuda.max_memory_allocated(device) - base))
        cost = fit_cost_model(samples)
        self._release(self.device)
        log.info(
            "%s: weights %.0f MB, %.0f MB for activations; a batch costs %.3g·B·T + %.3g·B·T² bytes (%s)",
            self.device,
            weights / 2**20,
            allowance / 2**20,
            cost.linear,
            cost.quadratic,
            self.precision,
        )
        return BatchLimit(cost=cost, allowance=allowance)

    # ---- the batched forward pass ------------------------------------------------------------------

    def _cpu_threads(self):
        """The engine's own CPU thread count on the calling thread (VAD, on another, runs on one)."""
        return torch_threads(self.threads) if self.device == "cpu" else contextlib.nullcontext()

    def _autocast(self):
        import torch

        if self._compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self._compute_dtype)

    def _features(self, waves: Sequence[np.ndarray]):
        """Fbank + LFR + CMVN for one padded batch (fp32), computed all at once on the device.

        FunASR's frontend, one waveform at a time, serves a frontend with other options or a piece shorter
        than one window.
        """
        import torch
        from torch.nn.utils.rnn import pad_sequence

        batched = self._batched_features
        if batched and min(len(wave) for wave in waves) >= batched.shape.window_samples:
            return batched(waves)
        feats, lengths = [], []
        for wave in waves:
            samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).to(self.device)
            feat, feat_len = self.frontend(samples[None, :], [samples.numel()])
            feats.append(feat[0])
            lengths.append(int(feat_len[0]))
        padded = pad_sequence(feats, batch_first=True).to(self.device, torch.float32)
        return padded, torch.tensor(lengths, dtype=torch.int32, device=self.device)

    def _queries(self, batch_size: int, language: str | None):
        import torch

        ids = [
            LANGUAGE_QUERY.get(language or self.settings.language, 0),
            *EVENT_EMOTION_QUERY,
            TEXTNORM_QUERY[self.settings.use_itn],
        ]
        query = self.model.embed(torch.tensor([ids], dtype=torch.long, device=self.device))
        return query.repeat(batch_size, 1, 1)

    def ctc_logits(self, waves: Sequence[np.ndarray], language: str | None = None) -> Iterator:
        """Yield fp32 CTC logits [frames, vocab] per waveform of one padded batch, queries included.

        `language` (zh, en, ...) overrides the configured one for this batch (a watch root's own).
        """
        import torch

        feats, lengths = self._features(waves)
        with torch.inference_mode():
            speech = torch.cat((self._queries(len(waves), language), feats), dim=1)
            with self._autocast():
                encoded, encoded_lengths = self.model.encoder(speech, lengths + QUERY_FRAMES)
            with torch.autocast(device_type=self.device.split(":")[0], enabled=False):
                for row, length in enumerate(encoded_lengths.tolist()):
                    yield self.model.ctc.ctc_lo(encoded[row, :length].float())

    def recognize_raw(self, waves: Sequence[np.ndarray], language: str | None = None) -> list[Recognition]:
        """Greedy CTC over one batch: argmax on the device, only the ids come back to the host."""
        return [
            Recognition(tuple(collapse_ctc(logits.argmax(dim=-1).cpu().numpy())))
            for logits in self.ctc_logits(waves, language)
        ]

    # ---- from speech pieces to Segments ------------------------------------------------------------

    def recognize(
        self,
        pieces: Sequence[SpeechLike],
        progress: Callable[[float], None] | None = None,
        language: str | None = None,
    ) -> list[Segment]:
        """Segments for pieces of speech, in the given order, computed in batches of similar length.

        `progress` hears, after each batch, the fraction of the pieces' encoder frames done.
        """
        lengths = [encoder_frames(len(piece.samples)) for piece in pieces]
        results: list[Segment | None] = [None] * len(pieces)
        done, total = 0, sum(lengths)
        for batch in plan_batches(lengths, self.batch_limit.fits):
            with self._cpu_threads():
                raw = self._recognize_backing_off([pieces[i].samples for i in batch], language)
            for index, recognition in zip(batch, raw, strict=True):
                results[index] = build_segment(self._sp, pieces[index], recognition, self.settings.use_itn)
            done += sum(lengths[i] for i in batch)
            if progress:
                progress(done / total)
        return [segment for segment in results if segment is not None]

    def _recognize_backing_off(self, waves: Sequence[np.ndarray], language: str | None) -> list[Recognition]:
        """`recognize_raw`, and after an out-of-memory error the same pieces again: the batch in halves,
        then a lone piece split at its quietest point; a piece that cannot shrink further is an
        EnvironmentFault (the job is retried later, never failed for it)."""
        import torch

        try:
            return self.recognize_raw(waves, language)
        except torch.OutOfMemoryError:
            self._after_oom(len(waves), max(len(wave) for wave in waves))
        except torch.AcceleratorError as error:
            raise DeviceLost(f"{self.device} failed: {str(error).splitlines()[0]}") from error
        if len(waves) > 1:
            first, second = halves(range(len(waves)))
            return [
                *self._recognize_backing_off([waves[i] for i in first], language),
                *self._recognize_backing_off([waves[i] for i in second], language),
            ]
        wave = waves[0]
        if len(wave) < 2 * MIN_SPLIT_S * SAMPLE_RATE:
            raise EnvironmentFault(
                f"{self.device}: out of memory even for one {len(wave) / SAMPLE_RATE:.1f} s piece; "
                "other programs hold the GPU's memory"
            )
        cut = quietest_cut(wave)
        (head,) = self._recognize_backing_off([wave[:cut]], language)
        (tail,) = self._recognize_backing_off([wave[cut:]], language)
        return [joined(head, tail, encoder_frames(cut) - QUERY_FRAMES)]

    def _after_oom(self, items: int, longest_samples: int) -> None:
        self._release(self.device)
        self.batch_limit = self.batch_limit.after_oom()
        log.warning(
            "%s: out of memory on %d piece(s) of up to %.1f s; retrying smaller, batch limit lowered",
            self.device,
            items,
            longest_samples / SAMPLE_RATE,
        )
