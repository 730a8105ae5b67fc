"""`svdaemon transcribe` end to end: real media made by PyAV, espeak-ng speech, silero, the tiny model.

Each call is the real command in-process (`cli.main`), so exit codes, result lines and sidecars are what a
user sees. The model is random, so the text is noise; the tests check structure, not words.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import srt
import webvtt

from svdaemon import cli
from svdaemon.synthetic_speech import build_track

from media import write_audio, write_random_bytes, write_video_only

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def speech_samples() -> np.ndarray:
    track = build_track(
        [0.5, "Please send the quarterly report", 0.8, "Rain fell all night over the villages", 1.0],
        noise_dbfs=-60,
    )
    return track.samples


@pytest.fixture
def run(tiny_model_dir: Path, tmp_path: Path, capsys):
    """Run `svdaemon transcribe` with the tiny model on the CPU; returns (exit code, stdout lines, stderr)."""
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {state}\nwatch: []\n")

    def invoke(*args: str) -> tuple[int, list[str], str]:
        code = cli.main(
            ["transcribe", "--config", str(config), "--model", str(tiny_model_dir), "--device", "cpu", *args]
        )
        out, err = capsys.readouterr()
        return code, out.splitlines(), err

    return invoke


def test_every_container_gets_valid_sidecars(run, tmp_path, speech_samples):
    sources = [
        write_audio(tmp_path / f"talk{ext}", speech_samples, 16000)
        for ext in (".wav", ".flac", ".mp3", ".m4a")
    ]
    sources.append(write_audio(tmp_path / "clip.mp4", speech_samples, 16000))
    code, lines, _ = run("--formats", "txt,srt,vtt,json", *map(str, sources))
    assert code == 0, lines
    assert len(lines) == len(sources)
    for line, source in zip(lines, sources, strict=True):
        assert line.startswith(f"ok  {source.name} → ") and "× realtime" in line
    # talk.wav came first; the other talk.* sources clash with its names and take their full names.
    assert (tmp_path / "talk.srt").exists() and (tmp_path / "talk.flac.srt").exists()
    for srt_path in tmp_path.glob("*.srt"):
        cues = list(srt.parse(srt_path.read_text(encoding="utf-8")))
        assert all(cue.start < cue.end for cue in cues)
        vtt_path = srt_path.with_suffix(".vtt")
        assert len(webvtt.read(str(vtt_path)).captions) == len(cues)
    data = json.loads((tmp_path / "clip.json").read_text(encoding="utf-8"))
    assert data["schema"] == 1 and data["file"] == str(tmp_path / "clip.mp4")
    assert data["device"] == "cpu" and data["precision"] == "fp32"
    assert 4.0 < data["duration_s"] < 8.0
    for segment in data["segments"]:
        assert 0 <= segment["start_s"] < segment["end_s"] <= data["duration_s"] + 0.01
        assert segment["text"]


def test_silence_gives_valid_empty_sidecars(run, tmp_path):
    source = write_audio(tmp_path / "quiet.wav", np.zeros(16000 * 3, np.float32), 16000)
    code, lines, _ = run("--formats", "txt,srt,vtt,json", str(source))
    assert code == 0, lines
    assert (tmp_path / "quiet.txt").read_bytes() == b""
    assert (tmp_path / "quiet.srt").read_bytes() == b""
    assert (tmp_path / "quiet.vtt").read_text() == "WEBVTT\n\n"
    assert json.loads((tmp_path / "quiet.json").read_text())["segments"] == []


def test_bad_inputs_fail_one_line_each_and_the_rest_are_done(run, tmp_path, speech_samples):
    good = write_audio(tmp_path / "good.wav", speech_samples, 16000)
    empty = tmp_path / "empty.wav"
    empty.touch()
    noise = write_random_bytes(tmp_path / "noise.wav")
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 100)
    video = write_video_only(tmp_path / "silent-film.mp4")
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    missing = tmp_path / "missing.flac"
    bad = [empty, noise, text, video, folder, missing]

    code, lines, err = run(*map(str, [*bad, good]))
    assert code == 1
    fails = [line for line in lines if line.startswith("FAIL  ")]
    assert len(fails) == len(bad)
    for path, line in zip(bad, fails, strict=True):
        assert str(path) in line
    assert "no audio stream" in fails[3]
    assert lines[-1].startswith("ok  good.wav")
    assert (tmp_path / "good.srt").exists()
    assert "Traceback" not in err
    for path in bad:
        assert not list(tmp_path.glob(f"{path.stem}*.srt"))


def test_symlinked_sidecar_is_never_written_through(run, tmp_path, speech_samples):
    source = write_audio(tmp_path / "linked.wav", speech_samples, 16000)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "linked.srt").symlink_to(target)
    code, lines, _ = run(str(source))
    assert code == 1
    assert "symbolic link" in lines[0]
    assert target.read_text() == "keep me" and (tmp_path / "linked.srt").is_symlink()
    assert not (tmp_path / "linked.txt").exists()  # the set is written whole or not at all


def test_unwritable_output_dir_fails_that_file(run, tmp_path, speech_samples):
    source = write_audio(tmp_path / "a.wav", speech_samples, 16000)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    code, lines, _ = run("--output-dir", str(blocker), str(source))
    assert code == 1
    assert lines[0].startswith("FAIL  ") and "not-a-folder" in lines[0]


def test_unicode_spaces_and_leading_dash_names(run, tmp_path, speech_samples):
    source = write_audio(tmp_path / "-会议 录音.m4a", speech_samples, 16000)
    code, lines, _ = run("--", str(source))
    assert code == 0, lines
    assert (tmp_path / "-会议 录音.srt").exists()


def test_truncated_mp3_gives_what_decodes(run, tmp_path, speech_samples):
    source = write_audio(tmp_path / "cut.mp3", np.tile(speech_samples, 3), 16000)
    with source.open("r+b") as handle:
        handle.truncate(source.stat().st_size // 2)
    code, lines, err = run(str(source))
    assert code == 0, lines
    assert "cut.mp3" in err and "WARNING" in err


def test_startup_errors_exit_2_with_one_line(tmp_path, tiny_model_dir, broken_model_dir):
    """Run as a real process: one line on stderr, no traceback, exit 2."""
    source = tmp_path / "x.wav"
    write_audio(source, np.zeros(16000, np.float32), 16000)
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    cases = [
        (["--model", str(no_model), "--device", "cpu"], "not a SenseVoice model folder"),
        (["--model", str(broken_model_dir), "--device", "cpu"], "weights did not load from the checkpoint"),
        (["--model", str(tiny_model_dir), "--device", "cuda"], 'device: "cuda"'),
        (["--model", str(tiny_model_dir), "--precision", "fp8"], "invalid choice"),
    ]
    for args, expected in cases:
        done = subprocess.run(
            [sys.executable, "-m", "svdaemon.cli", "transcribe", *args, str(source)],
            capture_output=True,
            text=True,
            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path)},
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
        assert "Traceback" not in done.stderr
        if "invalid choice" not in expected:
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
