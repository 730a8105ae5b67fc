"""`svdaemon bench`: svdaemon against FunASR's own ways of running SenseVoice Small, on the same audio.

The model is the full-size SenseVoiceSmall architecture with random weights (same compute as the published
checkpoint, no download), built once into the work dir. The audio is `--files` files of `--minutes` each,
espeak-ng speech with 25 % silence, file i from seed SEED + i, written as 16 kHz mono wav or MP3 (PyAV's
libmp3lame) and kept in the work dir by name (minutes, seed, format): delete the work dir to rebuild it.
The issue's GPU workloads are `--minutes 60` (one 1-hour wav) and `--minutes 3 --files 100 --format mp3`.
Rows:

- `funasr-whole`: `AutoModel.generate` on each whole file as one array (only up to 10 minutes a file: its
  attention memory grows with the square of the length);
- `funasr-windows-loop`: the seed method, 30 s windows with 2 s overlap, `generate` on each in a loop;
- `funasr-windows-batch`: `generate` on a file's list of windows, `batch_size` windows per forward pass
  (FunASR's own batching, fp32: the baseline the issue's 5x is measured against);
- each of those with FunASR's default threads (it sets 4) and as `...-ncpu` with `ncpu` = the cores;
- `funasr-fp16`: `funasr-windows-batch` with `AutoModel(fp16=True)`. That only casts the weights, and
  SenseVoice then fails with a dtype mismatch (float features into half weights), so a RuntimeError from its
  inference is reported with status `failed-as-expected` and the error's last line, and does not fail the
  bench; a failure to load, or running out of memory, is an ordinary `failed`. CUDA only: skipped on the CPU,
  where nobody runs half precision;
- `svdaemon`: `Pipeline.transcribe_file` on each file in turn, the whole path (decode, VAD, batched engine);
- `svdaemon-daemon`: the daemon's path: a fresh `JobQueue`, the real `Worker` over a `Pipeline` with the
  daemon's decode process; every file is enqueued at once and the clock runs from the first enqueue until
  the queue shows every job done, i.e. the last sidecars (txt, srt, beside the audio) are written. On CUDA
  it also reports the memory the card still reserves 5 s after the queue drained (the worker gives its
  cache back then) and after the worker's idle unload. It reports, on any device, the engine's share of the
  time the worker had files in hand (the rest is the GPU waiting for decode, VAD or sidecar writes) and the
  VAD's rows per model call (streams merged). It decodes with as many decode processes as the daemon would.

FunASR rows start from samples in memory: each file is decoded before the clock starts (so their run RSS
includes all the audio); the svdaemon rows read the files. Each row runs in its own process
(`python -m svdaemon.bench --row NAME ...`, internal), so peak RSS, thread settings and CUDA memory are the
row's own (not counting the daemon row's decode process); the child loads the model, warms up on 2 s of
speech through the same path, then times the row (model load excluded) and prints one JSON line.
For tests only, SVDAEMON_BENCH_MODEL_SIZE=tiny uses the tiny model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import platformdirs

from svdaemon import __version__
from svdaemon.child import python_module_command
from svdaemon.config import APP_NAME, Config, load_config
from svdaemon.cpu_threads import prefer_passive_waits
from svdaemon.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from svdaemon.jobs import JobQueue
    from svdaemon.worker import Worker

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SEED = 0
SILENCE_FRACTION = 0.25
AUDIO_FORMATS = ("wav", "mp3")
MP3_BIT_RATE = 64_000
ENCODE_BLOCK_S = 10.0
WINDOW_S, OVERLAP_S = 30.0, 2.0  # the seed method's windows
FUNASR_BATCH_SIZE = 8  # windows per forward pass in funasr-windows-batch
WHOLE_FILE_MAX_MIN = 10.0
WARMUP_S = 2.0
FULL_PARAMETERS = 233_999_167  # the published SenseVoiceSmall checkpoint's count
MODEL_SIZE_ENV = "SVDAEMON_BENCH_MODEL_SIZE"  # "full" (default) or "tiny", for tests
ROW_MARK = "svdaemon-bench-row "
FUNASR_METHODS = ("whole", "windows-loop", "windows-batch")
FAILED_AS_EXPECTED = "failed-as-expected"
DAEMON_ROW, ISSUE_BASELINE_ROW = "svdaemon-daemon", "funasr-windows-batch"
QUEUE_POLL_S = 0.01
DRAIN_RELEASE_S = 5.0  # the issue: reserved memory back to about the weights' size within 5 s of the drain
DAEMON_OVERRIDES = {"overwrite": "always", "skip_existing": False, "formats": ["txt", "srt"]}
EXIT_OK, EXIT_FAILED = 0, 2
TIMING_NOTE = (
    "timed: model load and a 2 s warm-up excluded; FunASR rows start from samples in memory (decoded "
    "before the clock), svdaemon from the files (decode + VAD + engine), svdaemon-daemon from the first "
    "enqueue until every job is done (sidecars written). peak RSS: the row's process, load included; "
    "run RSS: the timed run alone"
)


@dataclass(frozen=True)
class RowSpec:
    """One way of running the model: `method`, FunASR's `ncpu` (None: FunASR's default) and `fp16`.

    `failure_expected`: a RuntimeError from its inference is the known outcome, reported, not a failure.
    """

    name: str
    method: str
    ncpu: int | None = None
    fp16: bool = False
    failure_expected: bool = False


@dataclass(frozen=True)
class RowResult:
    """A row's measurement, or why it has none (`status` failed, failed-as-expected or skipped; `note`)."""

    name: str
    status: str
    note: str = ""
    threads: int | None = None
    precision: str | None = None
    audio_s: float | None = None
    wall_s: float | None = None
    peak_rss_mib: float | None = None  # the row's process, model load included
    run_peak_rss_mib: float | None = None  # during the timed run only (Linux)
    peak_vram_mib: float | None = None
    parameters: int | None = None
    pieces: int | None = None  # audio pieces the model ran on: the files, the windows or the speech segments
    vram_after_drain_mib: float | None = None  # daemon row on CUDA: reserved 5 s after the queue drained
    vram_after_unload_mib: float | None = None  # daemon row on CUDA: reserved after the worker's idle unload
    engine_busy_share: float | None = None  # daemon row: the engine's share of the time files were in hand
    vad_rows_per_call: float | None = None  # daemon row: VAD rows per model call (streams merged into one)

    @property
    def realtime(self) -> float | None:
        return self.audio_s / self.wall_s if self.status == "ok" and self.wall_s else None


@dataclass(frozen=True)
class Workload:
    """The benchmark audio: `files` files of `minutes` each, in `format`."""

    minutes: float
    files: int = 1
    format: str = "wav"

    def names(self) -> list[str]:
        """File names that say what is in them, so that a file once written is reused."""
        seeds = range(SEED, SEED + self.files)
        return [f"speech-{self.minutes:g}min-seed{seed}.{self.format}" for seed in seeds]

    @property
    def total_s(self) -> float:
        return self.files * round(self.minutes * 60.0 * SAMPLE_RATE) / SAMPLE_RATE


@dataclass(frozen=True)
class BenchInputs:
    """What every row process is given."""

    model_dir: Path
    audio: tuple[Path, ...]
    warmup: Path
    device: str
    batch_size: int = FUNASR_BATCH_SIZE
    config: Path | None = None

    def argv(self) -> list[str]:
        args = ["--model-dir", str(self.model_dir), "--audio", *map(str, self.audio)]
        args += ["--warmup", str(self.warmup), "--device", self.device, "--batch-size", str(self.batch_size)]
        return args + (["--config", str(self.config)] if self.config else [])


def machine_cores() -> int:
    return len(os.sched_getaffinity(0))


def row_specs(cores: int) -> tuple[RowSpec, ...]:
    funasr = [
        spec
        for method in FUNASR_METHODS
        for spec in (RowSpec(f"funasr-{method}", method), RowSpec(f"funasr-{method}-ncpu", method, cores))
    ]
    fp16 = RowSpec("funasr-fp16", "windows-batch", fp16=True, failure_expected=True)
    return (*funasr, fp16, RowSpec("svdaemon", "svdaemon"), RowSpec(DAEMON_ROW, "daemon"))


def select_rows(specs: tuple[RowSpec, ...], wanted: str | None) -> tuple[RowSpec, ...]:
    """The rows named in a comma list (all when None), in the table's order."""
    if not wanted:
        return specs
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    known = [spec.name for spec in specs]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ConfigError(f"--rows: unknown row {', '.join(unknown) or '(none)'}; rows: {', '.join(known)}")
    return tuple(spec for spec in specs if spec.name in names)


def skip_reason(spec: RowSpec, workload: Workload, device: str) -> str | None:
    """Why a row is not run on this workload and device, or None."""
    if spec.method == "whole" and workload.minutes > WHOLE_FILE_MAX_MIN:
        return f"whole-file inference only up to {WHOLE_FILE_MAX_MIN:g} min a file"
    if spec.fp16 and not device.startswith("cuda"):
        return "FunASR's fp16=True is a CUDA setting; not run on the CPU"
    return None


def split_windows(samples: np.ndarray, window_s: float = WINDOW_S, overlap_s: float = OVERLAP_S) -> list:
    """The seed method's windows: `window_s` long, each starting `overlap_s` before the previous one ends."""
    window, overlap = round(window_s * SAMPLE_RATE), round(overlap_s * SAMPLE_RATE)
    last_start = max(len(samples) - overlap, 1)
    return [samples[start : start + window] for start in range(0, last_start, window - overlap)]


# ---- inputs: model folder and audio -----------------------------------------------------------------


def default_work_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "bench"


def ensure_model(work_dir: Path, size: str) -> Path:
    """The random model folder for `size`, built on first use into a temp folder and renamed into place."""
    from svdaemon.synthetic_model import FULL, TINY, build_model_dir

    shapes = {"full": FULL, "tiny": TINY}
    if size not in shapes:
        raise ConfigError(f'{MODEL_SIZE_ENV}: "{size}" — expected full or tiny')
    directory = work_dir / f"sensevoice-{size}-seed{SEED}"
    if not directory.is_dir():
        print(f"building the random {size} SenseVoiceSmall in {directory} (once)", flush=True)
        partial = Path(tempfile.mkdtemp(prefix=".building-", dir=work_dir))
        build_model_dir(partial, shapes[size], seed=SEED)
        os.replace(partial, directory)
    return directory


def checkpoint_parameters(model_dir: Path) -> int:
    """Numbers in model.pt; SenseVoiceSmall keeps no buffers, so this is its parameter count."""
    import torch

    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True, mmap=True)
    return sum(tensor.numel() for tensor in state.values())


def pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] → little-endian 16-bit PCM, as a 16 kHz mono wav holds it."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm16(samples))


def write_mp3(path: Path, samples: np.ndarray) -> None:
    """16 kHz mono MP3 through PyAV's libmp3lame; its gapless header makes it decode to the same length."""
    import av

    step = round(ENCODE_BLOCK_S * SAMPLE_RATE)
    clipped = np.clip(samples, -1.0, 1.0).astype(np.float32)
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = MP3_BIT_RATE
        for start in range(0, len(clipped), step):
            frame = av.AudioFrame.from_ndarray(
                clipped[None, start : start + step], format="flt", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def decoded_samples(path: Path) -> np.ndarray:
    """A whole file as 16 kHz mono float32 in memory, as the FunASR rows are given it."""
    if path.suffix == ".wav":
        return read_wav(path)
    from svdaemon.audio import decode_blocks

    return np.concatenate(list(decode_blocks(path)))


def audio_seconds(path: Path) -> float:
    """A file's length: a wav's header, else the samples it decodes to (streamed, outside any clock)."""
    if path.suffix == ".wav":
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    from svdaemon.audio import decode_blocks

    return sum(len(block) for block in decode_blocks(path)) / SAMPLE_RATE


def write_atomically(path: Path, write: Callable[[Path, np.ndarray], None], samples: np.ndarray) -> None:
    """Write under a temp name, then rename: an interrupted run leaves no half file to be reused."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    write(partial, samples)
    os.replace(partial, path)


def make_audio(work_dir: Path, workload: Workload) -> tuple[tuple[Path, ...], Path]:
    """The benchmark files and a 2 s warm-up clip of speech in the work dir, each made once and kept."""
    from svdaemon.synthetic_speech import SENTENCES, make_speech_track, speak

    write = write_wav if workload.format == "wav" else write_mp3
    files = []
    for seed, name in enumerate(workload.names(), start=SEED):
        path = work_dir / name
        if not path.exists():
            track = make_speech_track(workload.minutes * 60.0, silence_fraction=SILENCE_FRACTION, seed=seed)
            write_atomically(path, write, track.samples)
        files.append(path)
    warmup = work_dir / "warmup-2s.wav"
    if not warmup.exists():
        write_atomically(warmup, write_wav, speak(SENTENCES[0])[: round(WARMUP_S * SAMPLE_RATE)])
    return tuple(files), warmup


# ---- one row, in its own process --------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """A row's work on some files, ready to time: `run` returns the pieces the model ran on (or None)."""

    run: Callable[[], int | None]
    audio_s: float


def _nothing_after(cuda: bool) -> dict[str, float]:
    return {}


@dataclass(frozen=True)
class Runner:
    """A loaded row: its model, the precision it computes in, how to prepare work on files, and what to
    measure and close after the timed run (extra RowResult fields)."""

    model: object
    precision: str
    prepare: Callable[[tuple[Path, ...]], Work]
    after: Callable[[bool], dict[str, float]] = _nothing_after


def _funasr_runner(spec: RowSpec, inputs: BenchInputs) -> Runner:
    """FunASR's AutoModel loaded as a user would, but with dither 0 so that its features are repeatable."""
    from funasr import AutoModel

    threads = {"ncpu": spec.ncpu} if spec.ncpu else {}
    half = {"fp16": True} if spec.fp16 else {}
    auto = AutoModel(
        model=str(inputs.model_dir),
        device=inputs.device,
        disable_update=True,
        disable_pbar=True,
        log_level="ERROR",
        frontend_conf={"dither": 0.0},
        **threads,
        **half,
    )
    assert auto.kwargs["frontend"].dither == 0.0
    decode = {"language": "auto", "use_itn": True}

    def on_file(samples: np.ndarray) -> Callable[[], int]:
        windows = split_windows(samples)
        if spec.method == "whole":
            return lambda: len(auto.generate(input=samples, **decode))
        if spec.method == "windows-loop":
            return lambda: sum(len(auto.generate(input=window, **decode)) for window in windows)
        return lambda: len(auto.generate(input=windows, batch_size=inputs.batch_size, **decode))

    def prepare(paths: tuple[Path, ...]) -> Work:
        files = [decoded_samples(path) for path in paths]
        runs = [on_file(samples) for samples in files]
        return Work(lambda: sum(run() for run in runs), sum(len(samples) for samples in files) / SAMPLE_RATE)

    return Runner(auto.model, "fp16" if spec.fp16 else "fp32", prepare)


def _engine_overrides(inputs: BenchInputs) -> dict[str, object]:
    return {"model": str(inputs.model_dir), "device": inputs.device}


def _svdaemon_runner(inputs: BenchInputs) -> Runner:
    """The pipeline as `svdaemon transcribe` loads it, with the model folder and device of the bench."""
    from svdaemon.pipeline import Pipeline

    pipeline = Pipeline.load(load_config(inputs.config, _engine_overrides(inputs)))

    def prepare(paths: tuple[Path, ...]) -> Work:
        return Work(
            lambda: sum(len(pipeline.transcribe_file(path).segments) for path in paths),
            sum(audio_seconds(path) for path in paths),
        )

    return Runner(pipeline.engine.model, pipeline.engine.precision, prepare)


def _record_thread_crashes() -> list[BaseException]:
    """Exceptions that end any thread of this process from now on, so that waiting on a dead worker ends."""
    crashes: list[BaseException] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        crashes.append(args.exc_value)
        previous(args)

    threading.excepthook = hook
    return crashes


def run_through_queue(
    queue: JobQueue, worker: Worker, paths: tuple[Path, ...], crashes: list[BaseException]
) -> None:
    """Enqueue every file, wake the worker and wait until no job is queued or running; all must be done."""
    from svdaemon.fingerprint import Fingerprint
    from svdaemon.jobs import JobState

    for path in paths:
        queue.enqueue(path, Fingerprint.of(path), root=path.parent)
    worker.wake()
    while (counts := queue.counts())[JobState.QUEUED] + counts[JobState.RUNNING]:
        if crashes:
            raise RuntimeError(f"the worker thread died: {crashes[0]!r}") from crashes[0]
        time.sleep(QUEUE_POLL_S)
    undone = queue.jobs([JobState.FAILED, JobState.SKIPPED])
    if undone:
        raise RuntimeError(f"{len(undone)} job(s) not done, e.g. {undone[0].path}: {undone[0].last_error}")


def _daemon_runner(inputs: BenchInputs) -> Runner:
    """The daemon's worker, queue and decode process, with a fresh state dir in the work dir.

    Sidecars are always rewritten (`overwrite: always`, `skip_existing: false`): each run does the full work.
    """
    import torch

    from svdaemon.daemon import decoder_count, load_pipeline
    from svdaemon.decoder import DecoderProcess
    from svdaemon.jobs import JobQueue
    from svdaemon.owner import current_owner
    from svdaemon.pipeline import BLOCK_S
    from svdaemon.worker import EngineUsage, Worker

    state_dir = Path(tempfile.mkdtemp(prefix=".daemon-state-", dir=inputs.audio[0].parent))
    overrides = {**_engine_overrides(inputs), **DAEMON_OVERRIDES, "state_dir": str(state_dir)}
    config = load_config(inputs.config, overrides)
    decoders = [DecoderProcess(block_s=BLOCK_S) for _ in range(decoder_count())]  # as many as the daemon's
    pipeline = load_pipeline(config, decoders)
    queue = JobQueue.open(state_dir)
    worker = Worker(queue, pipeline, config, current_owner(), decoders=decoders)
    vad = pipeline.vad
    crashes = _record_thread_crashes()
    worker.start()

    def prepare(paths: tuple[Path, ...]) -> Work:
        def run() -> None:
            worker.usage = EngineUsage()  # the timed run's own, not the warm-up's
            vad.calls = vad.rows = 0
            run_through_queue(queue, worker, paths, crashes)

        return Work(run, sum(audio_seconds(p) for p in paths))

    def reserved_mib() -> float:
        return round(torch.cuda.memory_reserved(torch.device(pipeline.engine.device)) / 2**20, 1)

    def after(cuda: bool) -> dict[str, float]:
        readings = {
            "engine_busy_share": round(worker.usage.busy_share, 3),
            "vad_rows_per_call": round(vad.rows / vad.calls, 1) if vad.calls else None,
        }
        if cuda:
            time.sleep(DRAIN_RELEASE_S)  # the worker, still running, gives its cache back when drained
            readings["vram_after_drain_mib"] = reserved_mib()
        worker.stop()
        if cuda:
            worker.unload()
            readings["vram_after_unload_mib"] = reserved_mib()
        queue.close()
        for decoder in decoders:
            decoder.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        return readings

    return Runner(pipeline.engine.model, pipeline.engine.precision, prepare, after)


def load_runner(spec: RowSpec, inputs: BenchInputs) -> Runner:
    if spec.method == "svdaemon":
        return _svdaemon_runner(inputs)
    if spec.method == "daemon":
        return _daemon_runner(inputs)
    return _funasr_runner(spec, inputs)


def process_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def restart_peak_rss() -> bool:
    """Restart this process's peak-RSS count from its current RSS (Linux's clear_refs 5); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def last_line(error: BaseException) -> str:
    """`Type: message` as a traceback's last line shows it."""
    said = "".join(traceback.format_exception_only(error)).strip().splitlines()
    return said[-1] if said else type(error).__name__


def timed_run(runner: Runner, inputs: BenchInputs, device) -> dict[str, object]:
    """Warm up outside the clock, then time the row on the benchmark audio; the RowResult fields measured."""
    import torch

    cuda = device.type == "cuda"
    runner.prepare((inputs.warmup,)).run()
    work = runner.prepare(inputs.audio)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    load_peak_mib = process_peak_rss_mib()
    run_peak_measured = restart_peak_rss()
    started = time.perf_counter()
    pieces = work.run()
    if cuda:
        torch.cuda.synchronize(device)
    wall_s = time.perf_counter() - started
    run_peak_mib = process_peak_rss_mib()
    return {
        "audio_s": round(work.audio_s, 3),
        "wall_s": round(wall_s, 3),
        "peak_rss_mib": round(max(load_peak_mib, run_peak_mib), 1),
        "run_peak_rss_mib": round(run_peak_mib, 1) if run_peak_measured else None,
        "peak_vram_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "pieces": pieces,
    }


def measure_row(spec: RowSpec, inputs: BenchInputs) -> RowResult:
    """Load, warm up and time the row (this process only); an expected failure is reported as such."""
    import torch

    runner = load_runner(spec, inputs)
    ran_on = next(runner.model.parameters()).device
    if ran_on.type != inputs.device.split(":")[0]:
        raise StartupError(f"the model runs on {ran_on}, not on {inputs.device} as asked")
    known = {
        "threads": torch.get_num_threads(),
        "precision": runner.precision,
        "parameters": sum(p.numel() for p in runner.model.parameters()),
    }
    try:
        measured = timed_run(runner, inputs, ran_on)
    except RuntimeError as error:
        if not spec.failure_expected or isinstance(error, torch.OutOfMemoryError):
            raise
        log.warning("%s failed, as expected", spec.name, exc_info=True)
        return RowResult(spec.name, FAILED_AS_EXPECTED, note=last_line(error), **known)
    note = "ran, though it was expected to fail" if spec.failure_expected else ""
    after = runner.after(ran_on.type == "cuda")
    return RowResult(spec.name, "ok", note=note, **known, **measured, **after)


def run_row_process(spec: RowSpec, inputs: BenchInputs, log_path: Path) -> RowResult:
    """Run one row in a fresh interpreter; a crash or error becomes a failed row that says why.

    The child's stderr (FunASR's chatter, a traceback) is kept in `log_path`.
    """
    command = python_module_command("svdaemon.bench", "--row", spec.name, *inputs.argv())
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    log_path.write_text(done.stderr, encoding="utf-8")
    for line in done.stdout.splitlines():
        if line.startswith(ROW_MARK):
            return RowResult(**json.loads(line[len(ROW_MARK) :]))
    said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    cause = said[-1] if said else "no output"
    return RowResult(spec.name, "failed", note=f"exit {done.returncode}: {cause} (log: {log_path})")


def row_main(argv: list[str] | None = None) -> int:
    """The child side: `python -m svdaemon.bench --row NAME ...` prints one marked JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m svdaemon.bench", description="one benchmark row (internal)"
    )
    parser.add_argument("--row", required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--audio", type=Path, nargs="+", required=True)
    parser.add_argument("--warmup", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=FUNASR_BATCH_SIZE)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    spec = next(spec for spec in row_specs(machine_cores()) if spec.name == args.row)
    if spec.name.startswith("svdaemon"):
        prefer_passive_waits()  # as `transcribe` and `run` do; FunASR's rows keep FunASR's own setting
    inputs = BenchInputs(
        args.model_dir, tuple(args.audio), args.warmup, args.device, args.batch_size, args.config
    )
    print(ROW_MARK + json.dumps(asdict(measure_row(spec, inputs))), flush=True)
    return EXIT_OK


# ---- the parent: run the rows, report ---------------------------------------------------------------


def _realtime_of(results: list[RowResult], name: str) -> float | None:
    return next((r.realtime for r in results if r.name == name and r.realtime is not None), None)


def svdaemon_ratio(results: list[RowResult]) -> tuple[RowResult | None, float | None]:
    """The fastest timed FunASR row, and svdaemon's speed over it (None when a side has no timed row)."""
    timed = [r for r in results if r.name.startswith("funasr-") and r.realtime is not None]
    best = max(timed, key=lambda r: r.realtime, default=None)
    ours = _realtime_of(results, "svdaemon")
    return best, (ours / best.realtime if best and ours else None)


def daemon_ratio(results: list[RowResult]) -> float | None:
    """The daemon row's speed over FunASR's own batching in fp32 (the issue's ≥ 5x); None unless both timed."""
    ours, theirs = _realtime_of(results, DAEMON_ROW), _realtime_of(results, ISSUE_BASELINE_ROW)
    return ours / theirs if ours and theirs else None


def ratio_lines(results: list[RowResult]) -> list[str]:
    """svdaemon over the best FunASR row; and the daemon row over funasr-windows-batch when both ran."""
    best, ratio = svdaemon_ratio(results)
    if best is None or ratio is None:
        lines = ["svdaemon / best FunASR row: n/a (needs a timed svdaemon row and a timed FunASR row)"]
    else:
        lines = [f"svdaemon / best FunASR row ({best.name}, {best.realtime:.2f}x realtime): {ratio:.2f}x"]
    ran = {r.name for r in results if r.status != "skipped"}
    if {DAEMON_ROW, ISSUE_BASELINE_ROW} <= ran:
        daemon = daemon_ratio(results)
        shown = "n/a (a row has no time)" if daemon is None else f"{daemon:.2f}x"
        lines.append(f"{DAEMON_ROW} / {ISSUE_BASELINE_ROW} (FunASR's own batching, fp32): {shown}")
    return lines


def format_table(results: list[RowResult], cuda: bool) -> str:
    """An aligned text table, one line per row, ending with its note (why it failed or was skipped)."""

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["row", "threads", "x-realtime", "wall s", "peak RSS MiB", "run RSS MiB", "engine busy %"]
    header += ["peak VRAM MiB", "drained VRAM MiB", "unloaded VRAM MiB"] if cuda else []
    lines = [header]
    for r in results:
        busy = None if r.engine_busy_share is None else 100 * r.engine_busy_share
        cells = [r.name, "-" if r.threads is None else str(r.threads), number(r.realtime, 2)]
        cells += [
            number(r.wall_s, 2),
            number(r.peak_rss_mib, 0),
            number(r.run_peak_rss_mib, 0),
            number(busy, 0),
        ]
        vram = [r.peak_vram_mib, r.vram_after_drain_mib, r.vram_after_unload_mib]
        lines.append(cells + ([number(value, 0) for value in vram] if cuda else []))
    notes = ["note", *(r.note if r.status == "ok" else f"{r.status}: {r.note}" for r in results)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        + (f"  {note}" if note else "")
        for line, note in zip(lines, notes, strict=True)
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata(workload: Workload, device: str, size: str, parameters: int, inputs: BenchInputs) -> dict:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": machine_cores(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "funasr": version("funasr"),
        "svdaemon": __version__,  # the package's own word: run from a source tree it has no metadata
        "device": device,
        "minutes": workload.minutes,
        "files": workload.files,
        "format": workload.format,
        "audio_s": workload.total_s,
        "seed": SEED,
        "silence_fraction": SILENCE_FRACTION,
        "window_s": WINDOW_S,
        "overlap_s": OVERLAP_S,
        "funasr_batch_size": inputs.batch_size,
        "model": f"SenseVoiceSmall {size}, random weights",
        "model_dir": str(inputs.model_dir),
        "parameters": parameters,
        "audio": [str(path) for path in inputs.audio],
        "command": shlex.join(sys.argv),
    }
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def check_parameters(size: str, parameters: int, results: list[RowResult]) -> tuple[str, bool]:
    """One line on the model's size; False when it is not the published architecture's count."""
    ran = {r.parameters for r in results if r.parameters is not None} - {parameters}
    if ran:
        return f"parameters: checkpoint has {parameters:,} but rows ran models of {sorted(ran)}", False
    if size != "full":
        return f"parameters: {parameters:,} (the {size} test model, not the full-size architecture)", True
    if parameters != FULL_PARAMETERS:
        return f"parameters: {parameters:,}, expected {FULL_PARAMETERS:,} for the full-size model", False
    return f"parameters: {parameters:,} = the published SenseVoiceSmall checkpoint's count", True


def workload_of(args: argparse.Namespace) -> Workload:
    """`--minutes`, `--files` and `--format`, checked."""
    if args.minutes <= 0:
        raise ConfigError(f"--minutes: {args.minutes:g} — expected a positive number of minutes")
    if args.files < 1:
        raise ConfigError(f"--files: {args.files} — expected at least 1")
    if args.format not in AUDIO_FORMATS:
        raise ConfigError(f"--format: {args.format} — expected {' or '.join(AUDIO_FORMATS)}")
    return Workload(args.minutes, args.files, args.format)


def run_bench(args: argparse.Namespace, config: Config) -> int:
    """Build the inputs, run each selected row in its own process, print the table (and write JSON).

    Exit 2 when a row failed (not as expected) or the model is not the size it should be, after reporting
    every row. The svdaemon rows read `config` again in their own process, from the same `--config`.
    """
    from svdaemon.engine import resolve_device

    workload = workload_of(args)
    size = os.environ.get(MODEL_SIZE_ENV, "full")
    specs = select_rows(row_specs(machine_cores()), args.rows)
    device = resolve_device(args.device)
    work_dir = Path(args.work_dir or default_work_dir()).expanduser().absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(work_dir, size)
    parameters = checkpoint_parameters(model_dir)
    audio, warmup = make_audio(work_dir, workload)
    inputs = BenchInputs(model_dir, audio, warmup, device, config=args.config)
    print(
        f"{workload.files} × {workload.minutes:g} min of speech ({workload.format}, {SILENCE_FRACTION:.0%} "
        f"silence, seeds {SEED}–{SEED + workload.files - 1}) = {workload.total_s / 60:.2f} min on {device}",
        flush=True,
    )

    results = []
    for spec in specs:
        reason = skip_reason(spec, workload, device)
        if reason is not None:
            result = RowResult(spec.name, "skipped", note=reason)
        else:
            print(f"running {spec.name} …", flush=True)
            result = run_row_process(spec, inputs, work_dir / f"{spec.name}.log")
        results.append(result)

    parameter_line, parameters_ok = check_parameters(size, parameters, results)
    print()
    print(format_table(results, cuda=device.startswith("cuda")))
    print()
    print(TIMING_NOTE)
    print(parameter_line)
    print("\n".join(ratio_lines(results)))
    if args.json:
        best, ratio = svdaemon_ratio(results)
        report = {
            "schema": 3,
            "metadata": metadata(workload, device, size, parameters, inputs),
            "timing": TIMING_NOTE,
            "rows": [{**asdict(r), "realtime": r.realtime} for r in results],
            "best_funasr_row": best.name if best else None,
            "svdaemon_over_best_funasr": ratio,
            "daemon_over_funasr_windows_batch": daemon_ratio(results),
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    failed = [r.name for r in results if r.status == "failed"]
    return EXIT_FAILED if failed or not parameters_ok else EXIT_OK


if __name__ == "__main__":
    sys.exit(row_main())
