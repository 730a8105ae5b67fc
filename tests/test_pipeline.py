"""One file through the whole pipeline with real components (PyAV, silero, the tiny model via FunASR)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from svdaemon import cli
from svdaemon.config import Config, load_config
from svdaemon.errors import SourceChanged
from svdaemon.pipeline import FileProgress, Outcome, Pipeline, dominant_language
from svdaemon.sidecars import Action, Decision, SidecarResult
from svdaemon.synthetic_speech import build_track
from svdaemon.transcript import Segment, Transcript

from media import write_audio

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    state = tmp_path_factory.mktemp("state")
    return load_config(
        None,
        {"model": str(tiny_model_dir), "device": "cpu", "state_dir": str(state), "watch": []},
    )


@pytest.fixture(scope="module")
def pipeline(config: Config) -> Pipeline:
    return Pipeline.load(config, threads=1)


def test_thread_count_is_set_after_silero_and_funasr(config):
    """silero's import sets 1 thread and FunASR sets its ncpu; svdaemon's choice must win, both ways."""
    Pipeline.load(config, threads=1)
    assert torch.get_num_threads() == 1
    Pipeline.load(config, threads=None)
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    Pipeline.load(config, threads=1)


def test_speech_becomes_segments_in_file_time(pipeline, tmp_path):
    track = build_track(
        [1.0, "Seven lazy owls were reading maps in the garden", 2.0, "Rain fell all night", 1.0]
    )
    source = write_audio(tmp_path / "owls.flac", track.samples, 16000)
    transcript = pipeline.transcribe_file(source)
    assert transcript.duration_s == pytest.approx(len(track.samples) / 16000, abs=0.05)
    assert 1 <= len(transcript.segments) <= 2
    first_speech_s = track.speech[0][0] / 16000
    assert transcript.segments[0].start_s == pytest.approx(first_speech_s - 0.1, abs=0.15)
    assert transcript.segments[-1].end_s <= transcript.duration_s


def test_source_changed_while_transcribing_writes_nothing(pipeline, tmp_path):
    track = build_track(["Please remember to bring the blue umbrella tomorrow", 0.5] * 3)
    source = write_audio(tmp_path / "moving.wav", track.samples, 16000)

    def touch_midway(done_s: float) -> None:
        os.utime(source, ns=(1, 1))

    with pytest.raises(SourceChanged, match=r"moving\.wav: changed while it was being transcribed"):
        pipeline.process(source, root=tmp_path, progress=touch_midway)
    assert not list(tmp_path.glob("moving*.srt")) and not list(tmp_path.glob("moving*.txt"))


def test_same_content_gives_the_same_sidecars(pipeline, tmp_path):
    track = build_track([0.3, "Warm bread and honey make a wonderful morning meal", 0.4])
    outputs = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        source = write_audio(tmp_path / folder / "a.wav", track.samples, 16000)
        outcome = pipeline.process(source, root=source.parent, formats=("txt", "srt", "vtt"))
        outputs.append({path.name: path.read_bytes() for path in outcome.written})
    assert outputs[0] == outputs[1]


def test_dominant_language_is_the_one_spoken_longest():
    def seg(language: str, seconds: float) -> Segment:
        return Segment(0.0, seconds, "x", language, "neutral", "speech", True, ())

    assert dominant_language((seg("en", 3), seg("zh", 5), seg("en", 1))) == "zh"
    assert dominant_language((seg("nospeech", 9), seg("ja", 1))) == "ja"
    assert dominant_language(()) == ""


def test_formats_override_per_call(pipeline, tmp_path):
    source = write_audio(tmp_path / "short.wav", np.zeros(8000, np.float32), 16000)
    outcome = pipeline.process(source, root=tmp_path, formats=("json",))
    assert [path.name for path in outcome.written] == ["short.json"]
    assert dataclasses.asdict(outcome.transcript)["segments"] == ()


def test_progress_moves_forward_as_speech_is_recognised(pipeline, tmp_path, monkeypatch):
    """Small blocks, VAD batches and speech pool make the engine run several times on a short file."""
    monkeypatch.setattr("svdaemon.pipeline.FLUSH_SPEECH_S", 3.0)
    monkeypatch.setattr("svdaemon.pipeline.BLOCK_S", 2.0)
    monkeypatch.setattr("svdaemon.vad.MAX_ROWS", 2)
    track = build_track([0.5, "Lions rarely roam alone in the wide open meadow", 1.0] * 4)
    source = write_audio(tmp_path / "lions.wav", track.samples, 16000)
    seen: list[FileProgress] = []
    transcript = pipeline.transcribe_file(source, progress=seen.append)
    recognised = [report.recognised_s for report in seen]
    assert len(set(recognised)) >= 4  # 0, then at least three steps
    assert recognised == sorted(recognised)
    assert 0 < min(r for r in recognised if r) < transcript.duration_s
    assert seen[-1].searched_s == seen[-1].recognised_s == pytest.approx(transcript.duration_s, abs=1e-3)


def test_progress_moves_while_the_speech_is_searched_for_not_only_once_it_is_recognised(
    pipeline, tmp_path, monkeypatch
):
    """A short file is searched whole (decode + VAD, block after block) before its one engine call: the bar
    must move through that search, not sit at 0 % and then jump."""
    monkeypatch.setattr("svdaemon.pipeline.BLOCK_S", 2.0)
    track = build_track([0.5, "Lions rarely roam alone in the wide open meadow", 1.0] * 4)
    source = write_audio(tmp_path / "lions.wav", track.samples, 16000)
    seen: list[FileProgress] = []
    transcript = pipeline.transcribe_file(source, progress=seen.append)
    searching = [report for report in seen if report.recognised_s == 0]
    assert len(searching) >= 3 and 0 < searching[0].fraction(transcript.duration_s) < 0.1
    fractions = [report.fraction(transcript.duration_s) for report in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_outcome_says_no_speech_and_which_sidecars_were_kept():
    def outcome(segments: tuple[Segment, ...], written: tuple[str, ...], kept: tuple[str, ...]) -> Outcome:
        transcript = Transcript(Path("/m/a.wav"), 12.0, "m", "cpu", "fp32", "en", segments)
        edited = "edited since svdaemon wrote it; overwrite: ours"
        sidecars = SidecarResult(
            tuple(Path("/m", name) for name in written),
            tuple(Decision(Path("/m", name), Action.KEEP, edited) for name in kept),
        )
        return Outcome(Path("/m/a.wav"), transcript, sidecars, wall_s=2.0)

    speech = (Segment(0.0, 1.0, "hi", "en", "neutral", "speech", True, ()),)
    assert (
        outcome(speech, ("a.txt", "a.srt"), ()).describe("12.0 s") == " → a.srt (12.0 s audio, 6.0× realtime)"
    )
    assert outcome(speech, ("a.txt",), ("a.srt",)).describe("12.0 s") == (
        " → a.txt (12.0 s audio, 6.0× realtime); kept a.srt (edited since svdaemon wrote it; overwrite: ours)"
    )
    assert (
        outcome(speech, (), ("a.txt", "a.srt"))
        .describe("12.0 s")
        .startswith(": all sidecars kept (12.0 s audio, 6.0× realtime); kept a.txt (")
    )
    assert outcome((), ("a.txt", "a.srt"), ()).describe("12.0 s") == (
        ": no speech found (12.0 s audio; empty a.txt, a.srt written)"
    )
    assert (
        outcome((), (), ("a.txt",))
        .describe("12.0 s")
        .startswith(": no speech found (12.0 s audio; nothing written); kept a.txt (")
    )


@pytest.fixture
def transcribe(tiny_model_dir: Path, tmp_path: Path, capsys):
    """`svdaemon transcribe` in-process on the tiny model; returns (exit code, stdout lines)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nwatch: []\n")

    def invoke(*files: Path) -> tuple[int, list[str]]:
        args = ["transcribe", "--config", str(config), "--model", str(tiny_model_dir), "--device", "cpu"]
        code = cli.main([*args, *map(str, files)])
        return code, capsys.readouterr().out.splitlines()

    return invoke


def test_transcribe_says_when_a_file_has_no_speech(transcribe, tmp_path):
    source = write_audio(tmp_path / "silence.wav", np.zeros(16000 * 3, np.float32), 16000)
    assert transcribe(source) == (
        0,
        ["ok  silence.wav: no speech found (3.0 s audio; empty silence.txt, silence.srt written)"],
    )
    assert (tmp_path / "silence.txt").read_bytes() == b"" == (tmp_path / "silence.srt").read_bytes()


def test_transcribe_keeps_a_sidecar_the_user_edited_and_says_so(transcribe, tmp_path):
    track = build_track([0.3, "Warm bread and honey make a wonderful morning meal", 0.4])
    source = write_audio(tmp_path / "bread.wav", track.samples, 16000)
    assert transcribe(source)[0] == 0
    edited = b"1\n00:00:00,300 --> 00:00:03,000\nWarm bread and honey.\n\n"
    (tmp_path / "bread.srt").write_bytes(edited)
    code, lines = transcribe(source)
    assert code == 0 and len(lines) == 1
    assert lines[0].startswith("ok  bread.wav → bread.txt (")
    assert lines[0].endswith("; kept bread.srt (edited since svdaemon wrote it; overwrite: ours)")
    assert (tmp_path / "bread.srt").read_bytes() == edited
