"""The memory criterion of issue 3: peak RSS of `svdaemon transcribe` on a 4-hour file must stay within
300 MB of its peak on a 10-minute file, i.e. memory must not grow with the duration.

    .venv/bin/python bench/memory_check.py [--long-minutes 240] [--short-minutes 10] [--full] [--work-dir D]

Both files repeat one few-minute espeak-ng speech track (25 % silence) and are written to disk block by
block as 16 kHz 16-bit wav, so the 4-hour file is never held in memory here. Each file is transcribed by
its own `svdaemon transcribe` process (CPU, txt/srt/json); its peak RSS comes from the kernel's rusage
for that child (`os.wait4`). Exits 0 on PASS, 1 on FAIL or when a transcription fails. The tiny random
model is the default (the pipeline's buffers, not the weights, are what could grow); `--full` uses the
full-size architecture.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

from svdaemon.bench import SAMPLE_RATE, SEED, SILENCE_FRACTION, ensure_model, pcm16

log = logging.getLogger("svdaemon.memory_check")

LIMIT_MB = 300.0  # allowed growth of peak RSS from the short file to the long one (10^6 bytes)
TRACK_MINUTES = 5.0  # the speech that is repeated to fill each file
MB = 1e6


def write_repeated_wav(path: Path, track: np.ndarray, minutes: float) -> None:
    """`minutes` of `track` repeated, written one repetition at a time (memory: one track)."""
    pcm = pcm16(track)
    remaining = round(minutes * 60 * SAMPLE_RATE) * 2  # bytes of 16-bit mono
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        while remaining > 0:
            wav.writeframes(pcm[:remaining])
            remaining -= len(pcm)


def peak_rss_of(command: list[str], log_path: Path) -> tuple[int, float]:
    """Run `command` with output to `log_path`; its exit code and peak RSS in MB (from the kernel)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawn(command[0], command, os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024 / MB  # ru_maxrss is in KiB


def transcribe_peak_mb(model_dir: Path, config: Path, source: Path, out_dir: Path) -> float:
    """Peak RSS of one `svdaemon transcribe` of `source`; RuntimeError when it does not succeed."""
    command = [sys.executable, "-m", "svdaemon.cli", "transcribe", "--config", str(config)]
    command += ["--model", str(model_dir), "--device", "cpu", "--formats", "txt,srt,json"]
    command += ["--output-dir", str(out_dir), "--", str(source)]
    log_path = out_dir / f"{source.stem}.log"
    code, peak_mb = peak_rss_of(command, log_path)
    if code != 0 or not (out_dir / f"{source.stem}.json").is_file():
        said = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise RuntimeError(f"transcribe {source.name} exited {code}: {said[-1] if said else 'no output'}")
    return peak_mb


def verdict(short_mb: float, long_mb: float, limit_mb: float = LIMIT_MB) -> tuple[bool, str]:
    """PASS when the long file's peak is within `limit_mb` of the short file's."""
    growth = long_mb - short_mb
    passed = growth <= limit_mb
    margin = f"growth {growth:+.0f} MB, limit {limit_mb:.0f} MB, margin {limit_mb - growth:.0f} MB"
    return passed, f"{'PASS' if passed else 'FAIL'}: {margin}"


def check(work_dir: Path, short_minutes: float, long_minutes: float, size: str) -> bool:
    from svdaemon.synthetic_speech import make_speech_track

    model_dir = ensure_model(work_dir, size)
    config = work_dir / "config.yaml"
    config.write_text(f"state_dir: {work_dir / 'state'}\n", encoding="utf-8")
    track = make_speech_track(min(TRACK_MINUTES, short_minutes) * 60, SILENCE_FRACTION, SEED).samples
    peaks = {}
    for minutes in (short_minutes, long_minutes):
        source = work_dir / f"speech-{minutes:g}min.wav"
        write_repeated_wav(source, track, minutes)
        out_dir = work_dir / f"out-{minutes:g}min"
        out_dir.mkdir(exist_ok=True)
        peaks[minutes] = transcribe_peak_mb(model_dir, config, source, out_dir)
        print(f"{minutes:g} min: peak RSS {peaks[minutes]:.0f} MB", flush=True)
        source.unlink()
    passed, line = verdict(peaks[short_minutes], peaks[long_minutes])
    print(f"{size} model, {long_minutes:g} min vs {short_minutes:g} min — {line}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-minutes", type=float, default=240.0)
    parser.add_argument("--short-minutes", type=float, default=10.0)
    parser.add_argument("--full", action="store_true", help="the full-size model instead of the tiny one")
    parser.add_argument("--work-dir", type=Path, help="keep the model and outputs here (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = "full" if args.full else "tiny"
    try:
        if args.work_dir:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            return 0 if check(args.work_dir.absolute(), args.short_minutes, args.long_minutes, size) else 1
        with tempfile.TemporaryDirectory(prefix="svdaemon-memory-") as tmp:
            return 0 if check(Path(tmp), args.short_minutes, args.long_minutes, size) else 1
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
