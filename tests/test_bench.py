"""`svdaemon bench` and bench/memory_check.py, run for real at small sizes on the tiny random model.

No timing is asserted: the numbers depend on the machine. What is checked is that every row asked for
comes back measured (or says why not), and that the memory criterion holds.
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
    MODEL_SIZE_ENV,
    BenchInputs,
    RowResult,
    format_table,
    ratio_line,
    row_specs,
    run_row_process,
    select_rows,
    split_windows,
)
from svdaemon.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_windows_overlap_by_two_seconds_and_cover_the_audio():
    samples = np.arange(65 * 16000, dtype=np.float32)
    windows = split_windows(samples)
    assert [len(w) / 16000 for w in windows] == [30.0, 30.0, 9.0]
    assert [w[0] / 16000 for w in windows] == [0.0, 28.0, 56.0]
    assert windows[-1][-1] == samples[-1]


def test_rows_are_each_funasr_method_with_both_thread_settings_then_svdaemon():
    names = [spec.name for spec in row_specs(cores=6)]
    assert names == [
        "funasr-whole",
        "funasr-whole-ncpu",
        "funasr-windows-loop",
        "funasr-windows-loop-ncpu",
        "funasr-windows-batch",
        "funasr-windows-batch-ncpu",
        "svdaemon",
    ]
    assert {spec.ncpu for spec in row_specs(cores=6) if spec.name.endswith("-ncpu")} == {6}
    chosen = select_rows(row_specs(cores=2), "svdaemon, funasr-whole")
    assert [spec.name for spec in chosen] == ["funasr-whole", "svdaemon"]
    with pytest.raises(ConfigError, match="funasr-typo"):
        select_rows(row_specs(cores=2), "funasr-typo")


def test_table_shows_failed_and_skipped_rows_with_their_reason():
    results = [
        RowResult("funasr-whole", "skipped", note="whole-file inference only up to 10 min"),
        RowResult("funasr-windows-loop", "ok", threads=2, audio_s=60.0, wall_s=6.0, peak_rss_mib=1500.0),
        RowResult("svdaemon", "failed", note="exit 1: StartupError: no model"),
    ]
    table = format_table(results, cuda=False).splitlines()
    assert table[0].split()[:3] == ["row", "threads", "x-realtime"]
    assert "skipped: whole-file inference" in table[1]
    assert "10.00" in table[2].split()
    assert "failed: exit 1: StartupError" in table[3]
    assert "n/a" in ratio_line(results)
    timed = [*results[:2], RowResult("svdaemon", "ok", audio_s=60.0, wall_s=3.0)]
    assert ratio_line(timed).endswith("2.00x")


@pytest.mark.integration
def test_a_row_that_cannot_load_its_model_is_reported_as_failed(tmp_path: Path):
    (tmp_path / "empty-model").mkdir()
    inputs = BenchInputs(tmp_path / "empty-model", tmp_path / "a.wav", tmp_path / "w.wav", "cpu")
    result = run_row_process(row_specs(cores=2)[2], inputs, tmp_path / "row.log")
    assert result.status == "failed"
    assert result.note.startswith("exit 1:")
    assert (tmp_path / "row.log").read_text(encoding="utf-8")


@pytest.mark.integration
def test_bench_runs_end_to_end_and_writes_json(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    out = tmp_path / "bench.json"
    rows = "funasr-whole,funasr-windows-batch-ncpu,svdaemon"
    command = [sys.executable, "-m", "svdaemon.cli", "bench", "--config", str(config), "--minutes", "0.75"]
    command += ["--rows", rows, "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, MODEL_SIZE_ENV: "tiny"}, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
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
    assert "svdaemon / best FunASR row (funasr-" in done.stdout


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
