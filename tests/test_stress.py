"""Issue 4's kill -9 and burst numbers at CI size, measured by bench/stress.py on real `svdaemon run` processes.

Nothing is a double: real daemon subprocesses, the tiny random SenseVoiceSmall through the real loader,
real espeak speech in real wav/flac/mp3 files, real SIGKILLs, the real state DB read from outside. The
stress sizes (200 kills, 20,000 files) run from the script, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stress import RSS_GROWTH_LIMIT_MB, KillPlan, run_burst, run_kill

pytestmark = pytest.mark.integration

KILLS_WHILE_WORKING = 30
KILL_FILES = 80  # ≥ 40; each kill lets ~1.3 files finish here, so 30 kills leave work to the end
BURST_FILES = 2000


def test_kill_9_at_30_moments_while_working_loses_nothing(tmp_path: Path, tiny_model_dir: Path):
    plan = KillPlan(files=KILL_FILES, kills=KILLS_WHILE_WORKING, startup_kills=3, seed=0)
    result = run_kill(tmp_path / "kill", tiny_model_dir, plan)
    checks = result.checks

    assert result.kills.working >= KILLS_WHILE_WORKING, result.kills
    # Every file has all its sidecars or a recorded failure.
    assert checks.missing_sidecars == () and checks.unfinished == ()
    assert checks.corrupt_not_failed == ()
    # Every sidecar parses and is complete: identical to those of the byte-identical copies of its source.
    assert checks.unparsable == () and checks.wrong_duration == ()
    assert checks.differing == ()
    assert checks.temp_files == ()
    assert checks.running_jobs == 0
    assert checks.integrity == "ok"
    assert checks.extra_transcriptions <= result.kills.total
    assert result.kills.orphaned_children == 0
    assert result.final_exit_code == 0


def test_a_burst_of_2000_files_gives_2000_jobs_and_rss_grows_at_most_300_mb(
    tmp_path: Path, tiny_model_dir: Path
):
    result = run_burst(tmp_path / "burst", tiny_model_dir, BURST_FILES)

    assert (result.jobs, result.done) == (BURST_FILES, BURST_FILES)
    assert result.written_twice == 0 and result.sidecar_writes == BURST_FILES
    assert result.growth_mb <= RSS_GROWTH_LIMIT_MB, result
    assert result.final_exit_code == 0
