"""One file end to end: decode → speech segments → SenseVoice → cues → sidecars, in bounded memory.

Audio is streamed block by block; speech pieces go to the engine in groups as they close, so a 4-hour
file holds one block, the open speech span and the pieces waiting for a batch — never the whole file.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from svdaemon import audio, subtitles
from svdaemon.config import Config
from svdaemon.decoder import Decoder
from svdaemon.engine import EngineSettings, SenseVoiceEngine
from svdaemon.errors import DecodeError, SourceChanged
from svdaemon.fingerprint import Fingerprint
from svdaemon.models import resolve_model_dir
from svdaemon.sidecars import HashStore, SidecarResult, SidecarSettings, write_sidecars
from svdaemon.transcript import Segment, Transcript
from svdaemon.vad import SpeechSegmenter, VadNetwork, load_vad_model

log = logging.getLogger(__name__)

BLOCK_S = 30.0  # decoded audio per step
FLUSH_SPEECH_S = 600.0  # speech gathered before it goes to the engine: a pool for well-matched batches

Progress = Callable[[float], None]  # seconds of audio recognised


@dataclass(frozen=True)
class FileProgress:
    """How far one file is, in seconds of its audio: searched for speech (decoded and through VAD), and
    recognised. Both passes count alike, so a bar moves while VAD runs and not only once the engine does."""

    searched_s: float = 0.0
    recognised_s: float = 0.0

    def fraction(self, duration_s: float) -> float:
        if duration_s <= 0:
            return 0.0
        return min((self.searched_s + self.recognised_s) / (2 * duration_s), 1.0)


@dataclass(frozen=True)
class SpeechChunk:
    """Speech pieces that close the span [from_s, to_s] of a file's audio; `last` when the file ends at to_s."""

    pieces: tuple
    from_s: float
    to_s: float
    last: bool
    duration_s: float  # the file's length as probed (its headers' word until the last chunk says otherwise)

    @property
    def speech_s(self) -> float:
        return sum(len(piece.samples) for piece in self.pieces) / audio.SAMPLE_RATE


@dataclass(frozen=True)
class Outcome:
    """One file done: its transcript, the sidecars written and those kept as the user's, the time it took."""

    source: Path
    transcript: Transcript
    sidecars: SidecarResult
    wall_s: float

    @property
    def written(self) -> tuple[Path, ...]:
        return self.sidecars.written

    @property
    def realtime_factor(self) -> float:
        return self.transcript.duration_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def no_speech(self) -> bool:
        """Nothing was recognised: the sidecars written are the contract's empty files."""
        return not self.transcript.segments

    def describe(self, audio_length: str) -> str:
        """The result after the file's name, for the CLI's `ok` line and the daemon's log, `audio_length` in
        the caller's words ("3.0 s"): where the subtitles are, or that no speech was found (else empty
        sidecars look like a failure), and which sidecars were kept as the user's."""
        audio = f"{audio_length} audio"
        written = self.sidecars.written
        if self.no_speech:
            names = ", ".join(path.name for path in written)
            said = f": no speech found ({audio}; {f'empty {names}' if names else 'nothing'} written)"
        elif written:
            shown = next((path for path in written if path.suffix == ".srt"), written[0])
            said = f" → {shown.name} ({audio}, {self.realtime_factor:.1f}× realtime)"
        else:
            said = f": all sidecars kept ({audio}, {self.realtime_factor:.1f}× realtime)"
        kept = self.sidecars.kept_note()
        return f"{said}; {kept}" if kept else said


class InProcessDecoder:
    """Decodes in this process: for one-shot commands, where a decoder crash ends only that command."""

    def probe(self, path: Path, audio_language: str | None = None) -> audio.AudioInfo:
        return audio.probe(path, audio_language)

    def blocks(
        self,
        path: Path,
        audio_language: str | None = None,
        duration_s: float | None = None,
        span: audio.SampleSpan | None = None,
    ) -> Iterator[np.ndarray]:
        return audio.decode_blocks(path, block_s=BLOCK_S, audio_language=audio_language, span=span)


def set_threads(count: int) -> None:
    """Set torch's CPU threads last: importing silero sets 1, FunASR sets its `ncpu`; whichever ran last won.
    (Each place that computes also sets its own count on its own thread: `cpu_threads`.)"""
    import torch

    torch.set_num_threads(count)


def dominant_language(segments: tuple[Segment, ...]) -> str:
    """The language of the most speech time; "" without speech."""
    spoken: Counter[str] = Counter()
    for segment in segments:
        if segment.language and segment.language != "nospeech":
            spoken[segment.language] += segment.end_s - segment.start_s
    return spoken.most_common(1)[0][0] if spoken else ""


class Pipeline:
    """The loaded models and settings; `transcribe_file` does one file, `write` its sidecars."""

    def __init__(
        self, config: Config, engine: SenseVoiceEngine, vad: VadNetwork, decoder: Decoder | None = None
    ) -> None:
        self.config = config
        self.decoder = decoder or InProcessDecoder()
        self.engine = engine
        self.vad = vad  # shared by every file being segmented; the worker keeps it on the engine's device
        self.store = HashStore(config.state_dir)
        self.sidecar_settings = SidecarSettings(
            output_dir=config.output_dir, language_in_name=config.language_in_name, overwrite=config.overwrite
        )

    @classmethod
    def load(
        cls,
        config: Config,
        threads: int | None = None,
        download: bool = True,
        decoder: Decoder | None = None,
        vad_threads: int | None = None,
    ) -> Pipeline:
        """Load VAD and SenseVoice (StartupError when that cannot be done), then fix the thread count.

        `vad_threads`: VAD's own CPU threads where it runs beside the engine; None runs it on the caller's.
        """
        vad = VadNetwork(load_vad_model(), threads=vad_threads)
        model_dir = resolve_model_dir(config.model, config.model_hub, download=download)
        engine = SenseVoiceEngine(
            EngineSettings(
                model_dir=model_dir,
                model_name=config.model,
                device=config.device,
                precision=config.precision,
                half_max_rel_error=config.half_max_rel_error,
                language=config.language,
                use_itn=config.use_itn,
                threads=threads,
            )
        )
        set_threads(engine.threads)
        return cls(config, engine, vad, decoder)

    def speech_chunks(
        self,
        source: Path,
        checkpoint: Callable[[float], None] | None = None,
        decoder: Decoder | None = None,
    ) -> Iterator[SpeechChunk]:
        """The file's speech in chunks of about FLUSH_SPEECH_S, each closing a span of the audio.

        Decoding and VAD only, so that it can run ahead of the engine (`decoder`: one of several, for files
        prepared at once); `checkpoint` hears, after every decoded block, how many seconds of the file have
        been searched for speech (a place to stop, and progress).
        DecodeError when the file holds no decodable audio.
        """
        decoder = decoder or self.decoder
        stated_s = decoder.probe(source, self.config.audio_language).duration_s
        segmenter = SpeechSegmenter(self.vad, self.config.vad)
        pending = []
        decoded = 0
        closed_s = 0.0
        for block in decoder.blocks(source, self.config.audio_language, stated_s):
            decoded += len(block)
            pending.extend(segmenter.push(block))
            if sum(len(piece.samples) for piece in pending) >= FLUSH_SPEECH_S * audio.SAMPLE_RATE:
                decoded_s = decoded / audio.SAMPLE_RATE
                yield SpeechChunk(tuple(pending), closed_s, decoded_s, last=False, duration_s=stated_s)
                pending, closed_s = [], decoded_s
            if checkpoint:
                checkpoint(decoded / audio.SAMPLE_RATE)
        if decoded == 0:
            raise DecodeError(f"{source}: no audio decoded (zero duration)")
        pending.extend(segmenter.finish())
        duration_s = decoded / audio.SAMPLE_RATE
        yield SpeechChunk(tuple(pending), closed_s, duration_s, last=True, duration_s=duration_s)

    def transcribe_file(
        self,
        source: Path,
        progress: Callable[[FileProgress], None] | None = None,
        language: str | None = None,
    ) -> Transcript:
        """Recognise all speech in `source`; DecodeError when it holds no decodable audio.

        `progress` hears how far the search for speech and the recognition have got, after every decoded
        block and every batch; `language` overrides the configured spoken language (a watch root's own).
        """
        seen = FileProgress()

        def report(**moved: float) -> None:
            nonlocal seen
            seen = replace(seen, **moved)
            if progress:
                progress(seen)

        segments: list[Segment] = []
        duration_s = 0.0
        for chunk in self.speech_chunks(source, lambda searched_s: report(searched_s=searched_s)):
            segments.extend(self.recognise(chunk, lambda done_s: report(recognised_s=done_s), language))
            duration_s = chunk.to_s
        report(searched_s=duration_s, recognised_s=duration_s)
        return self.transcript(source, segments, duration_s)

    def recognise(
        self, chunk: SpeechChunk, progress: Progress | None = None, language: str | None = None
    ) -> list[Segment]:
        """Segments for a chunk's pieces; progress moves through the span the chunk closes."""
        span = chunk.to_s - chunk.from_s
        report = None if progress is None else lambda fraction: progress(chunk.from_s + fraction * span)
        return self.engine.recognize(chunk.pieces, report, language)

    def transcript(self, source: Path, segments: list[Segment], duration_s: float) -> Transcript:
        """The file's transcript from its segments in time order; silent segments are left out."""
        spoken = tuple(segment for segment in segments if segment.text)
        return Transcript(
            file=source.absolute(),
            duration_s=round(duration_s, 3),
            model=self.engine.settings.model_name,
            device=self.engine.device,
            precision=self.engine.precision,
            language=dominant_language(spoken),
            segments=spoken,
        )

    def render(self, transcript: Transcript, formats: tuple[str, ...]) -> dict[str, str]:
        return {fmt: subtitles.render(fmt, transcript, self.config.subtitles) for fmt in formats}

    def process(
        self,
        source: Path,
        root: Path | None = None,
        formats: tuple[str, ...] | None = None,
        progress: Callable[[FileProgress], None] | None = None,
        language: str | None = None,
        output_dir: Path | None = None,
    ) -> Outcome:
        """Transcribe `source` and write its sidecars; nothing is written if the file changed meanwhile.

        `formats`, `language` and `output_dir` override the configuration for this file (a watch root's).
        """
        started = time.perf_counter()
        before = Fingerprint.of(source)
        transcript = self.transcribe_file(source, progress, language)
        sidecars = self.write(transcript, before, root, formats, output_dir)
        return Outcome(source, transcript, sidecars, time.perf_counter() - started)

    def write(
        self,
        transcript: Transcript,
        read_as: Fingerprint,
        root: Path | None = None,
        formats: tuple[str, ...] | None = None,
        output_dir: Path | None = None,
    ) -> SidecarResult:
        """The transcript's sidecars, unless the source is no longer the content that was read (`read_as`).

        Those the overwrite policy keeps as the user's are left as they are and named in the result.
        """
        source = transcript.file
        try:
            changed = Fingerprint.of(source) != read_as
        except FileNotFoundError:
            changed = True
        if changed:
            raise SourceChanged(f"{source}: changed while it was being transcribed; no sidecars written")
        return write_sidecars(
            source,
            self.render(transcript, formats or self.config.formats),
            language=transcript.language,
            settings=self.sidecar_settings_for(output_dir),
            store=self.store,
            root=root,
        )

    def sidecar_settings_for(self, output_dir: Path | None) -> SidecarSettings:
        """The configured sidecar settings, with a watch root's own `output_dir` when it has one."""
        return replace(self.sidecar_settings, output_dir=output_dir) if output_dir else self.sidecar_settings
