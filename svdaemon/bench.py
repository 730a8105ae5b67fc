"""`svdaemon bench`: svdaemon against FunASR's own ways of running SenseVoice Small, on the same audio.

The model is the full-size SenseVoiceSmall architecture with random weights (same compute as the published
checkpoint, no download), built once into the work dir. The audio is espeak-ng speech with 25 % silence
from a fixed seed, written as a 16 kHz wav. Rows:

- `funasr-whole`: `AutoModel.generate` on the whole file as one array (only up to 10 minutes: its
  attention memory grows with the square of the length);
- `funasr-windows-loop`: the seed method, 30 s windows with 2 s overlap, `generate` on each in a loop;
- `funasr-windows-batch`: `generate` on the list of windows with `batch_size` windows per forward pass;
- each of those with FunASR's default threads (it sets 4) and as `...-ncpu` with `ncpu` = the cores;
- `svdaemon`: `Pipeline.transcribe_file` on the wav, the whole path (decode, VAD, batched engine).

FunASR rows start from samples in memory; the svdaemon row reads the file. Each row runs in its own
process (`python -m svdaemon.bench --row NAME ...`, internal), so peak RSS, thread settings and CUDA memory
are the row's own; the child loads the model, warms up on 2 s of speech, then times the row (model load
excluded) and prints one JSON line. For tests only, SVDAEMON_BENCH_MODEL_SIZE=tiny uses the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import platformdirs

from svdaemon.config import APP_NAME, Config, load_config
from svdaemon.errors import ConfigError, StartupError

SAMPLE_RATE = 16000
SEED = 0
SILENCE_FRACTION = 0.25
WINDOW_S, OVERLAP_S = 30.0, 2.0  # the seed method's windows
FUNASR_BATCH_SIZE = 8  # windows per forward pass in funasr-windows-batch
WHOLE_FILE_MAX_MIN = 10.0
WARMUP_S = 2.0
FULL_PARAMETERS = 233_999_167  # the published SenseVoiceSmall checkpoint's count
MODEL_SIZE_ENV = "SVDAEMON_BENCH_MODEL_SIZE"  # "full" (default) or "tiny", for tests
ROW_MARK = "svdaemon-bench-row "
FUNASR_METHODS = ("whole", "windows-loop", "windows-batch")
EXIT_OK, EXIT_FAILED = 0, 2
TIMING_NOTE = (
    "timed: model load and a 2 s warm-up excluded; FunASR rows start from samples in memory, "
    "svdaemon from the wav file (decode + VAD + engine). peak RSS: the row's process, load included; "
    "run RSS: the timed run alone"
)


@dataclass(frozen=True)
class RowSpec:
    """One way of running the model: `method`, and FunASR's `ncpu` (None: FunASR's default)."""

    name: str
    method: str
    ncpu: int | None = None


@dataclass(frozen=True)
class RowResult:
    """A row's measurement, or why it has none (`status` failed or skipped, `note` says why)."""

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
    pieces: int | None = None  # audio pieces the model ran on: 1, the windows, or the speech segments

    @property
    def realtime(self) -> float | None:
        return self.audio_s / self.wall_s if self.status == "ok" and self.wall_s else None


@dataclass(frozen=True)
class BenchInputs:
    """What every row process is given."""

    model_dir: Path
    audio: Path
    warmup: Path
    device: str
    batch_size: int = FUNASR_BATCH_SIZE
    config: Path | None = None

    def argv(self) -> list[str]:
        args = ["--model-dir", str(self.model_dir), "--audio", str(self.audio), "--warmup", str(self.warmup)]
        args += ["--device", self.device, "--batch-size", str(self.batch_size)]
        return args + (["--config", str(self.config)] if self.config else [])


def machine_cores() -> int:
    return len(os.sched_getaffinity(0))


def row_specs(cores: int) -> tuple[RowSpec, ...]:
    funasr = [
        spec
        for method in FUNASR_METHODS
        for spec in (RowSpec(f"funasr-{method}", method), RowSpec(f"funasr-{method}-ncpu", method, cores))
    ]
    return (*funasr, RowSpec("svdaemon", "svdaemon"))


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


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def make_audio(work_dir: Path, minutes: float) -> tuple[Path, Path, float]:
    """Write the benchmark speech and a 2 s warm-up clip of it; return both paths and the length in s."""
    from svdaemon.synthetic_speech import make_speech_track

    track = make_speech_track(minutes * 60.0, silence_fraction=SILENCE_FRACTION, seed=SEED)
    audio, warmup = work_dir / f"speech-{minutes:g}min-seed{SEED}.wav", work_dir / "warmup.wav"
    write_wav(audio, track.samples)
    start = track.speech[0][0] if track.speech else 0
    write_wav(warmup, track.samples[start : start + round(WARMUP_S * SAMPLE_RATE)])
    return audio, warmup, len(track.samples) / SAMPLE_RATE


# ---- one row, in its own process --------------------------------------------------------------------


def _funasr_runner(spec: RowSpec, inputs: BenchInputs):
    """FunASR's AutoModel loaded as a user would, but with dither 0 so that its features are repeatable."""
    from funasr import AutoModel

    threads = {"ncpu": spec.ncpu} if spec.ncpu else {}
    auto = AutoModel(
        model=str(inputs.model_dir),
        device=inputs.device,
        disable_update=True,
        disable_pbar=True,
        log_level="ERROR",
        frontend_conf={"dither": 0.0},
        **threads,
    )
    assert auto.kwargs["frontend"].dither == 0.0
    decode = {"language": "auto", "use_itn": True}

    def prepare(path: Path) -> Callable[[], int]:
        samples = read_wav(path)
        windows = split_windows(samples)
        if spec.method == "whole":
            return lambda: len(auto.generate(input=samples, **decode))
        if spec.method == "windows-loop":
            return lambda: sum(len(auto.generate(input=window, **decode)) for window in windows)
        return lambda: len(auto.generate(input=windows, batch_size=inputs.batch_size, **decode))

    return auto.model, "fp32", prepare


def _svdaemon_runner(inputs: BenchInputs):
    """The pipeline as `svdaemon transcribe` loads it, with the model folder and device of the bench."""
    from svdaemon.pipeline import Pipeline

    config = load_config(inputs.config, {"model": str(inputs.model_dir), "device": inputs.device})
    pipeline = Pipeline.load(config)

    def prepare(path: Path) -> Callable[[], int]:
        return lambda: len(pipeline.transcribe_file(path).segments)

    return pipeline.engine.model, pipeline.engine.precision, prepare


def process_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def restart_peak_rss() -> bool:
    """Restart this process's peak-RSS count from its current RSS (Linux's clear_refs 5); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def measure_row(spec: RowSpec, inputs: BenchInputs) -> RowResult:
    """Load, warm up outside the clock, then time the row on the benchmark audio (this process only)."""
    import torch

    runner = _svdaemon_runner(inputs) if spec.method == "svdaemon" else _funasr_runner(spec, inputs)
    model, precision, prepare = runner
    ran_on = next(model.parameters()).device
    if ran_on.type != inputs.device.split(":")[0]:
        raise StartupError(f"the model runs on {ran_on}, not on {inputs.device} as asked")
    cuda = ran_on.type == "cuda"
    prepare(inputs.warmup)()
    work = prepare(inputs.audio)
    if cuda:
        torch.cuda.synchronize(ran_on)
        torch.cuda.reset_peak_memory_stats(ran_on)
    load_peak_mib = process_peak_rss_mib()
    run_peak_measured = restart_peak_rss()
    started = time.perf_counter()
    pieces = work()
    if cuda:
        torch.cuda.synchronize(ran_on)
    wall_s = time.perf_counter() - started
    run_peak_mib = process_peak_rss_mib()
    with wave.open(str(inputs.audio), "rb") as wav:
        audio_s = wav.getnframes() / wav.getframerate()
    return RowResult(
        name=spec.name,
        status="ok",
        threads=torch.get_num_threads(),
        precision=precision,
        audio_s=round(audio_s, 3),
        wall_s=round(wall_s, 3),
        peak_rss_mib=round(max(load_peak_mib, run_peak_mib), 1),
        run_peak_rss_mib=round(run_peak_mib, 1) if run_peak_measured else None,
        peak_vram_mib=round(torch.cuda.max_memory_allocated(ran_on) / 2**20, 1) if cuda else None,
        parameters=sum(p.numel() for p in model.parameters()),
        pieces=pieces,
    )


def run_row_process(spec: RowSpec, inputs: BenchInputs, log_path: Path) -> RowResult:
    """Run one row in a fresh interpreter; a crash or error becomes a failed row that says why.

    The child's stderr (FunASR's chatter, a traceback) is kept in `log_path`.
    """
    command = [sys.executable, "-m", "svdaemon.bench", "--row", spec.name, *inputs.argv()]
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
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--warmup", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=FUNASR_BATCH_SIZE)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    spec = next(spec for spec in row_specs(machine_cores()) if spec.name == args.row)
    inputs = BenchInputs(args.model_dir, args.audio, args.warmup, args.device, args.batch_size, args.config)
    print(ROW_MARK + json.dumps(asdict(measure_row(spec, inputs))), flush=True)
    return EXIT_OK


# ---- the parent: run the rows, report ---------------------------------------------------------------


def svdaemon_ratio(results: list[RowResult]) -> tuple[RowResult | None, float | None]:
    """The fastest timed FunASR row, and svdaemon's speed over it (None when a side has no timed row)."""
    timed = [r for r in results if r.name.startswith("funasr-") and r.realtime is not None]
    best = max(timed, key=lambda r: r.realtime, default=None)
    ours = next((r.realtime for r in results if r.name == "svdaemon" and r.realtime is not None), None)
    return best, (ours / best.realtime if best and ours else None)


def ratio_line(results: list[RowResult]) -> str:
    best, ratio = svdaemon_ratio(results)
    if best is None or ratio is None:
        return "svdaemon / best FunASR row: n/a (needs a timed svdaemon row and a timed FunASR row)"
    return f"svdaemon / best FunASR row ({best.name}, {best.realtime:.2f}x realtime): {ratio:.2f}x"


def format_table(results: list[RowResult], cuda: bool) -> str:
    """An aligned text table, one line per row, ending with its note (why it failed or was skipped)."""

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["row", "threads", "x-realtime", "wall s", "peak RSS MiB", "run RSS MiB"]
    header += ["peak VRAM MiB"] if cuda else []
    lines = [header]
    for r in results:
        cells = [r.name, "-" if r.threads is None else str(r.threads), number(r.realtime, 2)]
        cells += [number(r.wall_s, 2), number(r.peak_rss_mib, 0), number(r.run_peak_rss_mib, 0)]
        lines.append(cells + ([number(r.peak_vram_mib, 0)] if cuda else []))
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


def metadata(minutes: float, device: str, size: str, parameters: int, inputs: BenchInputs) -> dict:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": machine_cores(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "funasr": version("funasr"),
        "svdaemon": version("svdaemon"),
        "device": device,
        "minutes": minutes,
        "seed": SEED,
        "silence_fraction": SILENCE_FRACTION,
        "window_s": WINDOW_S,
        "overlap_s": OVERLAP_S,
        "funasr_batch_size": inputs.batch_size,
        "model": f"SenseVoiceSmall {size}, random weights",
        "model_dir": str(inputs.model_dir),
        "parameters": parameters,
        "audio": str(inputs.audio),
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


def run_bench(args: argparse.Namespace, config: Config) -> int:
    """Build the inputs, run each selected row in its own process, print the table (and write JSON).

    Exit 2 when a row failed or the model is not the size it should be, after reporting every row.
    The svdaemon row reads `config` again in its own process, from the same `--config`.
    """
    from svdaemon.engine import resolve_device

    if args.minutes <= 0:
        raise ConfigError(f"--minutes: {args.minutes:g} — expected a positive number of minutes")
    size = os.environ.get(MODEL_SIZE_ENV, "full")
    specs = select_rows(row_specs(machine_cores()), args.rows)
    device = resolve_device(args.device)
    work_dir = Path(args.work_dir or default_work_dir()).expanduser().absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(work_dir, size)
    parameters = checkpoint_parameters(model_dir)
    audio, warmup, audio_s = make_audio(work_dir, args.minutes)
    inputs = BenchInputs(model_dir, audio, warmup, device, config=args.config)
    print(
        f"{audio_s / 60:.2f} min of speech ({SILENCE_FRACTION:.0%} silence, seed {SEED}) on {device}",
        flush=True,
    )

    results = []
    for spec in specs:
        if spec.method == "whole" and args.minutes > WHOLE_FILE_MAX_MIN:
            result = RowResult(
                spec.name, "skipped", note=f"whole-file inference only up to {WHOLE_FILE_MAX_MIN:g} min"
            )
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
    print(ratio_line(results))
    if args.json:
        best, ratio = svdaemon_ratio(results)
        report = {
            "schema": 1,
            "metadata": metadata(args.minutes, device, size, parameters, inputs),
            "timing": TIMING_NOTE,
            "rows": [{**asdict(r), "realtime": r.realtime} for r in results],
            "best_funasr_row": best.name if best else None,
            "svdaemon_over_best_funasr": ratio,
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    failed = [r.name for r in results if r.status == "failed"]
    return EXIT_FAILED if failed or not parameters_ok else EXIT_OK


if __name__ == "__main__":
    sys.exit(row_main())
