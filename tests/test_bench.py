"""`svdaemon bench` and bench/memory_check.py, run for real at small sizes on the tiny random model.

No timing is asserted: the numbers depend on the machine. What is checked is that every row asked for
comes back measured (or says why not), that the inputs are what the flags ask for, and that the memory
criterion holds. The GPU test runs only where CUDA is (marked `gpu`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svdaemon.bench import (
    FAILED_AS_EXPECTED,
    MODEL_SIZE_ENV,
    BenchInputs,
    RowResult,
    Workload,
    audio_seconds,
    decoded_samples,
    format_table,
    ratio_lines,
    row_specs,
    run_row_process,
    select_rows,
    skip_reason,
    split_windows,
    write_mp3,
    write_wav,
)
from svdaemon.errors import ConfigError
from svdaemon.synthetic_speech import SENTENCES, speak

REPO = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`svdaemon bench` on the tiny model with a config of its own; its output and its JSON report."""
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "svdaemon.cli", "bench", "--config", str(config), *flags]
    command += ["--work-dir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, MODEL_SIZE_ENV: "tiny"}, check=False
    )
    assert out.exists(), done.stdout + done.stderr
    return done, json.loads(out.read_text(encoding="utf-8"))


def test_windows_overlap_by_two_seconds_and_cover_the_audio():
    samples = np.arange(65 * 16000, dtype=np.float32)
    windows = split_windows(samples)
    assert [len(w) / 16000 for w in windows] == [30.0, 30.0, 9.0]
    assert [w[0] / 16000 for w in windows] == [0.0, 28.0, 56.0]
    assert windows[-1][-1] == samples[-1]


def test_rows_are_each_funasr_method_with_both_thread_settings_then_fp16_then_svdaemon_both_ways():
    names = [spec.name for spec in row_specs(cores=6)]
    assert names == [
        "funasr-whole",
        "funasr-whole-ncpu",
        "funasr-windows-loop",
        "funasr-windows-loop-ncpu",
        "funasr-windows-batch",
        "funasr-windows-batch-ncpu",
        "funasr-fp16",
        "svdaemon",
        "svdaemon-daemon",
    ]
    assert {spec.ncpu for spec in row_specs(cores=6) if spec.name.endswith("-ncpu")} == {6}
    assert [spec.name for spec in row_specs(cores=6) if spec.failure_expected] == ["funasr-fp16"]
    chosen = select_rows(row_specs(cores=2), "svdaemon-daemon, svdaemon, funasr-whole")
    assert [spec.name for spec in chosen] == ["funasr-whole", "svdaemon", "svdaemon-daemon"]
    with pytest.raises(ConfigError, match="funasr-typo"):
        select_rows(row_specs(cores=2), "funasr-typo")


def test_whole_file_rows_skip_long_files_and_fp16_runs_only_on_cuda():
    specs = {spec.name: spec for spec in row_specs(cores=2)}
    short, long = Workload(3, files=100, format="mp3"), Workload(60)
    assert skip_reason(specs["funasr-whole"], short, "cpu") is None
    assert "up to 10 min" in skip_reason(specs["funasr-whole"], long, "cuda")
    assert "CUDA" in skip_reason(specs["funasr-fp16"], short, "cpu")
    assert skip_reason(specs["funasr-fp16"], short, "cuda:1") is None
    assert skip_reason(specs["svdaemon-daemon"], long, "cpu") is None


def test_workload_names_each_file_by_length_seed_and_format():
    workload = Workload(0.5, files=2, format="mp3")
    assert workload.names() == ["speech-0.5min-seed0.mp3", "speech-0.5min-seed1.mp3"]
    assert workload.total_s == 60.0
    assert Workload(3, files=100).total_s == 18000.0


def test_table_shows_failed_and_skipped_rows_with_their_reason():
    results = [
        RowResult("funasr-whole", "skipped", note="whole-file inference only up to 10 min"),
        RowResult("funasr-windows-loop", "ok", threads=2, audio_s=60.0, wall_s=6.0, peak_rss_mib=1500.0),
        RowResult("svdaemon", "failed", note="exit 1: StartupError: no model"),
    ]
    table = format_table(results, cuda=False).splitlines()
    assert table[0].split()[:3] == ["row", "threads", "x-realtime"]
    assert "VRAM" not in table[0]
    assert "skipped: whole-file inference" in table[1]
    assert "10.00" in table[2].split()
    assert "failed: exit 1: StartupError" in table[3]
    assert ratio_lines(results) == [
        "svdaemon / best FunASR row: n/a (needs a timed svdaemon row and a timed FunASR row)"
    ]
    timed = [*results[:2], RowResult("svdaemon", "ok", audio_s=60.0, wall_s=3.0)]
    assert ratio_lines(timed)[0].endswith("2.00x")


def test_cuda_table_shows_vram_after_drain_and_unload_and_the_expected_fp16_failure():
    error = "RuntimeError: mat1 and mat2 must have the same dtype, but got Float and Half"
    results = [
        RowResult(
            "funasr-windows-batch", "ok", threads=16, audio_s=3600.0, wall_s=36.0, peak_vram_mib=3000.0
        ),
        RowResult("funasr-fp16", FAILED_AS_EXPECTED, note=error, precision="fp16"),
        RowResult("svdaemon", "ok", audio_s=3600.0, wall_s=4.5, peak_vram_mib=2100.0),
        RowResult(
            "svdaemon-daemon",
            "ok",
            audio_s=3600.0,
            wall_s=3.6,
            peak_vram_mib=2200.0,
            vram_after_drain_mib=900.0,
            vram_after_unload_mib=0.0,
        ),
    ]
    table = format_table(results, cuda=True).splitlines()
    assert "peak VRAM MiB  drained VRAM MiB  unloaded VRAM MiB" in table[0]
    assert table[4].split()[-3:] == ["2200", "900", "0"]
    assert table[2].endswith(f"{FAILED_AS_EXPECTED}: {error}")
    first, daemon = ratio_lines(results)
    assert first == "svdaemon / best FunASR row (funasr-windows-batch, 100.00x realtime): 8.00x"
    assert daemon == "svdaemon-daemon / funasr-windows-batch (FunASR's own batching, fp32): 10.00x"


def test_the_daemon_ratio_needs_both_rows_run_and_says_so_when_one_failed():
    baseline = RowResult("funasr-windows-batch", "ok", audio_s=60.0, wall_s=1.0)
    failed = RowResult("svdaemon-daemon", "failed", note="exit 1: boom")
    assert len(ratio_lines([baseline])) == 1
    assert len(ratio_lines([RowResult("funasr-windows-batch", "skipped"), failed])) == 1
    assert ratio_lines([baseline, failed])[1].endswith("n/a (a row has no time)")


@pytest.mark.integration
def test_mp3_files_decode_to_exactly_the_samples_written(tmp_path: Path):
    samples = np.tile(speak(SENTENCES[1]), 3)
    write_mp3(tmp_path / "speech.mp3", samples)
    write_wav(tmp_path / "speech.wav", samples)
    assert len(decoded_samples(tmp_path / "speech.mp3")) == len(samples)
    assert (
        audio_seconds(tmp_path / "speech.mp3")
        == audio_seconds(tmp_path / "speech.wav")
        == len(samples) / 16000
    )


@pytest.mark.integration
def test_a_row_that_cannot_load_its_model_is_reported_as_failed(tmp_path: Path):
    (tmp_path / "empty-model").mkdir()
    inputs = BenchInputs(tmp_path / "empty-model", (tmp_path / "a.wav",), tmp_path / "w.wav", "cpu")
    result = run_row_process(row_specs(cores=2)[2], inputs, tmp_path / "row.log")
    assert result.status == "failed"
    assert result.note.startswith("exit 1:")
    assert (tmp_path / "row.log").read_text(encoding="utf-8")


@pytest.mark.integration
def test_funasr_fp16_fails_on_its_dtype_mismatch_and_is_reported_as_expected(tmp_path: Path, tiny_model_dir):
    """The bench skips this row on the CPU; run directly here, FunASR's fp16=True fails as it does on CUDA
    (half weights, float features), which exercises the row's expected-failure path without a GPU."""
    audio = tmp_path / "speech.wav"
    write_wav(audio, speak(SENTENCES[2]))
    spec = next(spec for spec in row_specs(cores=2) if spec.name == "funasr-fp16")
    result = run_row_process(spec, BenchInputs(tiny_model_dir, (audio,), audio, "cpu"), tmp_path / "row.log")
    assert result.status == FAILED_AS_EXPECTED, result
    assert result.note.startswith("RuntimeError: ") and "dtype" in result.note
    assert result.precision == "fp16" and result.parameters > 0
    assert "Traceback" in (tmp_path / "row.log").read_text(encoding="utf-8")


@pytest.mark.integration
def test_bench_runs_end_to_end_and_writes_json(tmp_path: Path):
    rows = "funasr-whole,funasr-windows-batch-ncpu,svdaemon"
    done, report = run_bench(tmp_path, "--minutes", "0.75", "--rows", rows)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["name"] for row in report["rows"]] == rows.split(",")
    for row in report["rows"]:
        assert row["status"] == "ok", row
        assert row["audio_s"] == pytest.approx(45.0)
        assert row["wall_s"] > 0 and row["realtime"] > 0
        assert row["peak_rss_mib"] >= row["run_peak_rss_mib"] > 0
        assert row["parameters"] == report["metadata"]["parameters"] > 0
        assert row["pieces"] >= 1
    assert report["rows"][1]["threads"] == report["metadata"]["cores"]
    assert {"date", "hostname", "cpu", "torch", "funasr", "device", "minutes", "seed", "command"} <= set(
        report["metadata"]
    )
    assert (report["metadata"]["files"], report["metadata"]["format"]) == (1, "wav")
    assert "svdaemon / best FunASR row (funasr-" in done.stdout


@pytest.mark.integration
def test_bench_on_several_mp3_files_runs_the_daemon_path_and_compares_it(tmp_path: Path):
    rows = "funasr-windows-batch,svdaemon,svdaemon-daemon,funasr-fp16"
    flags = ("--files", "2", "--format", "mp3", "--minutes", "0.5", "--rows", rows)
    done, report = run_bench(tmp_path, *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    rows_by_name = {row["name"]: row for row in report["rows"]}
    assert list(rows_by_name) == ["funasr-windows-batch", "funasr-fp16", "svdaemon", "svdaemon-daemon"]
    assert rows_by_name.pop("funasr-fp16")["status"] == "skipped"
    for row in rows_by_name.values():
        assert row["status"] == "ok", row
        assert row["audio_s"] == pytest.approx(2 * 30.0)
        assert row["wall_s"] > 0 and row["peak_rss_mib"] > 0
        assert row["vram_after_drain_mib"] is None and row["vram_after_unload_mib"] is None  # CPU
    daemon = rows_by_name["svdaemon-daemon"]
    assert 0 < daemon["engine_busy_share"] <= 1 and daemon["vad_rows_per_call"] > 0
    audio = [Path(path) for path in report["metadata"]["audio"]]
    assert [path.name for path in audio] == ["speech-0.5min-seed0.mp3", "speech-0.5min-seed1.mp3"]
    assert (report["metadata"]["files"], report["metadata"]["format"]) == (2, "mp3")
    for path in audio:
        assert path.with_suffix(".txt").is_file() and path.with_suffix(".srt").is_file()
    assert not list((tmp_path / "work").glob(".daemon-state-*"))
    assert report["daemon_over_funasr_windows_batch"] > 0 and report["svdaemon_over_best_funasr"] > 0
    assert "svdaemon / best FunASR row (funasr-windows-batch, " in done.stdout
    assert "svdaemon-daemon / funasr-windows-batch (FunASR's own batching, fp32): " in done.stdout


@pytest.mark.integration
@pytest.mark.gpu
def test_bench_on_cuda_reports_vram_after_drain_and_unload_and_fp16_failing_as_expected(tmp_path: Path):
    rows = "funasr-windows-batch,funasr-fp16,svdaemon-daemon"
    done, report = run_bench(tmp_path, "--device", "cuda", "--minutes", "0.5", "--rows", rows)
    assert done.returncode == 0, done.stdout + done.stderr
    rows_by_name = {row["name"]: row for row in report["rows"]}
    assert rows_by_name["funasr-fp16"]["status"] == FAILED_AS_EXPECTED, rows_by_name["funasr-fp16"]
    daemon = rows_by_name["svdaemon-daemon"]
    assert daemon["status"] == "ok", daemon
    assert daemon["peak_vram_mib"] > 0
    weights_mib = daemon["parameters"] * 4 / 2**20  # fp32 weights; autocast computes in half
    assert daemon["vram_after_drain_mib"] <= weights_mib + 64  # the weights, VAD and feature constants
    assert daemon["vram_after_unload_mib"] == 0
    assert "drained VRAM MiB" in done.stdout and f"{FAILED_AS_EXPECTED}: " in done.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    ("short_minutes", "long_minutes"),
    [(2, 20), pytest.param(10, 240, marks=pytest.mark.slow, id="issue-size")],
)
def test_memory_does_not_grow_with_duration(tmp_path: Path, short_minutes: int, long_minutes: int):
    """The issue's criterion (peak RSS within 300 MB); CI runs 2 vs 20 min, `-m slow` the 10 vs 240 min."""
    command = [sys.executable, str(REPO / "bench" / "memory_check.py"), "--short-minutes", str(short_minutes)]
    command += ["--long-minutes", str(long_minutes), "--work-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
