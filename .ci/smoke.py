"""End-to-end smoke of an installed svdaemon, as a user meets it: run by .ci/smoke.sh with the venv's Python.

`svdaemon doctor` (healthy, every version the tested one: the venv is the lock); `svdaemon transcribe` on
wav, mp3, m4a and mp4 files; `svdaemon run` on a watched folder that receives two good recordings and a
corrupt one (sidecars for the good ones, a recorded failure for the corrupt one); `svdaemon status --json`;
SIGTERM, and a clean exit 0 within seconds. The model is the tiny random SenseVoiceSmall the tests use, the
speech is espeak-ng's, the media are written with PyAV. Each step prints one line; the first failure stops
the run with exit 1 and says what was expected and what came.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMATS = (".wav", ".mp3", ".m4a", ".mp4")
STOP_WITHIN_S = 10.0  # the README's promise for SIGTERM
DAEMON_WITHIN_S = 180.0  # two short files on a tiny model take seconds; this bounds a hang


class SmokeFailure(Exception):
    """A step did not do what a user is promised."""


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def make_inputs(work: Path) -> tuple[Path, dict[str, Path]]:
    """The tiny model folder, and one short spoken recording per format (written with the tests' makers)."""
    sys.path.insert(0, str(REPO / "tests"))
    from svdaemon.synthetic_model import TINY, build_model_dir
    from svdaemon.synthetic_speech import SAMPLE_RATE, make_speech_track

    from media import write_audio  # tests/media.py: the same PyAV writers the tests use

    model = build_model_dir(work / "model", TINY, seed=0)
    media = work / "media"
    media.mkdir()
    files = {}
    for seed, suffix in enumerate(FORMATS):
        track = make_speech_track(4.0, seed=seed)
        files[suffix] = write_audio(media / f"speech{suffix}", track.samples, SAMPLE_RATE)
    return model, files


def write_config(work: Path, model: Path, watch: Path) -> Path:
    """A config a user could write: the model folder, the CPU, one watched folder, no tray."""
    config = work / "config.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML: no quoting rules to get wrong for odd temp paths
            {
                "model": str(model),
                "device": "cpu",
                "watch": [{"path": str(watch)}],
                "state_dir": str(work / "state"),
                "settle_s": 0.5,
                "max_attempts": 1,  # the corrupt file fails for good on its first try
                "tray": "off",
            }
        ),
        encoding="utf-8",
    )
    return config


def svdaemon(exe: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, check=False)


def expect(done: subprocess.CompletedProcess[str], code: int, what: str) -> None:
    if done.returncode != code:
        raise SmokeFailure(
            f"{what}: exit {done.returncode}, expected {code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )


def check_sidecars(source: Path) -> None:
    """The default formats beside the source: a transcript and subtitles that parse as SRT."""
    for suffix in (".txt", ".srt"):
        sidecar = source.with_suffix(suffix)
        if not sidecar.is_file():
            raise SmokeFailure(f"{source.name}: no {sidecar.name} beside it")
    srt = source.with_suffix(".srt").read_text(encoding="utf-8")
    if srt and "-->" not in srt:
        raise SmokeFailure(f"{source.name}: {source.with_suffix('.srt').name} is not SRT: {srt[:200]!r}")


def smoke_doctor(exe: Path, config: Path) -> None:
    """doctor passes on this config and finds every version the tested one: the venv is the lock."""
    done = svdaemon(exe, "doctor", "--config", str(config))
    expect(done, 0, "svdaemon doctor")
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    if warnings or "versions: as tested" not in done.stdout:
        raise SmokeFailure("svdaemon doctor: the venv is not the tested set:\n" + done.stdout)
    versions = next(line for line in done.stdout.splitlines() if line.startswith("PyAV"))
    step(f"doctor: healthy, versions as tested ({versions})")


def smoke_transcribe(exe: Path, config: Path, files: dict[str, Path]) -> None:
    started = time.monotonic()
    done = svdaemon(exe, "transcribe", "--config", str(config), *map(str, files.values()))
    expect(done, 0, "svdaemon transcribe " + " ".join(files))
    for source in files.values():
        check_sidecars(source)
    step(f"transcribe: {', '.join(files)} → .txt and .srt each ({time.monotonic() - started:.1f} s)")


def wait_for(what: str, check, within_s: float, daemon: subprocess.Popen[str]):
    """Poll `check` until it returns something true; fail if the daemon exits or time runs out."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if daemon.poll() is not None:
            raise SmokeFailure(f"the daemon exited ({daemon.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise SmokeFailure(f"no {what} within {within_s:.0f} s")


def status(exe: Path, config: Path) -> dict | None:
    done = svdaemon(exe, "status", "--json", "--config", str(config), timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 else None


def failed_jobs(exe: Path, config: Path) -> list[dict]:
    done = svdaemon(exe, "queue", "--failed", "--json", "--config", str(config), timeout=30)
    expect(done, 0, "svdaemon queue --failed --json")
    return json.loads(done.stdout)


def drop_files(watch: Path, files: dict[str, Path]) -> tuple[list[Path], Path]:
    """Two good recordings and a corrupt one into the watched folder, each appearing whole (a rename)."""
    good = [watch / "first.mp3", watch / "second.m4a"]
    for target, source in zip(good, (files[".mp3"], files[".m4a"]), strict=True):
        temporary = watch / f".{target.name}.part"
        temporary.write_bytes(source.read_bytes())
        temporary.rename(target)
    corrupt = watch / "corrupt.wav"  # text under an audio name: no demuxer can take it for sound
    corrupt.write_bytes(b"this is not a recording\n" * 400)
    return good, corrupt


def smoke_daemon(exe: Path, config: Path, watch: Path, files: dict[str, Path], log: Path) -> None:
    started = time.monotonic()
    with log.open("w") as output:
        daemon = subprocess.Popen(
            [str(exe), "run", "--config", str(config)], stdout=output, stderr=subprocess.STDOUT, text=True
        )
    try:
        wait_for("answer to `svdaemon status`", lambda: status(exe, config), 120, daemon)
        step(f"run: the daemon answers status ({time.monotonic() - started:.1f} s after start)")
        good, corrupt = drop_files(watch, files)
        have_sidecars = lambda: all(f.with_suffix(".srt").exists() for f in good)  # noqa: E731
        wait_for("sidecars of the two good files", have_sidecars, DAEMON_WITHIN_S, daemon)
        for source in good:
            check_sidecars(source)
        failures = wait_for(
            f"recorded failure of {corrupt.name}", lambda: failed_jobs(exe, config), DAEMON_WITHIN_S, daemon
        )
        if [Path(job["path"]).name for job in failures] != [corrupt.name] or not failures[0]["last_error"]:
            raise SmokeFailure(f"failed jobs: expected only {corrupt.name} with its cause, got {failures}")
        step(
            f"run: sidecars for {good[0].name} and {good[1].name}; {corrupt.name} failed: {failures[0]['last_error']}"
        )
        report = wait_for("status with the queue settled", lambda: _settled(status(exe, config)), 60, daemon)
        step(f"status --json: state {report['state']}, queue {report['queue']}, device {report['device']}")
        stop(daemon)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def _settled(report: dict | None) -> dict | None:
    """The status once the daemon says two files done and one failed, nothing queued or running."""
    if not report or not report.get("running"):
        return None
    queue = report.get("queue", {})
    settled = (
        queue.get("done") == 2
        and queue.get("failed") == 1
        and not queue.get("queued")
        and not queue.get("running")
    )
    return report if settled else None


def stop(daemon: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired as exc:
        raise SmokeFailure(f"SIGTERM: the daemon still runs after {STOP_WITHIN_S:.0f} s") from exc
    if code != 0:
        raise SmokeFailure(f"SIGTERM: the daemon exited {code}, expected 0")
    step(f"SIGTERM: clean exit 0 in {time.monotonic() - started:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svdaemon", type=Path, required=True, help="the venv's svdaemon command")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="svdaemon-smoke-"))
    log = work / "daemon.log"
    try:
        model, files = make_inputs(work)
        step(f"inputs: tiny model and {len(files)} spoken files in {work}")
        watch = work / "watch"
        watch.mkdir()
        config = write_config(work, model, watch)
        smoke_doctor(args.svdaemon, config)
        smoke_transcribe(args.svdaemon, config, files)
        smoke_daemon(args.svdaemon, config, watch, files, log)
    except (SmokeFailure, subprocess.TimeoutExpired) as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        if log.exists():
            print(
                f"smoke: the daemon's output ({log}):\n{log.read_text(errors='replace')[-6000:]}",
                file=sys.stderr,
            )
        print(f"smoke: work folder kept: {work}", file=sys.stderr)
        return 1
    if args.keep:
        step(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
