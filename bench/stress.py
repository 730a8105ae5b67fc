"""Crash and burst stress for `svdaemon run`: issue 4's kill -9 and burst numbers, on real processes.

    .venv/bin/python bench/stress.py kill --files 40 --kills 200 [--startup-kills N] [--work DIR] [--seed N]
    .venv/bin/python bench/stress.py burst --files 20000 [--work DIR]

`kill`: a folder of short speech files (wav, flac, mp3; a few contents, byte-identical copies of each) and
two corrupt ones. `svdaemon run` is started as a real subprocess and SIGKILLed at a random moment (seeded)
after it starts working, again and again, with some kills during start-up (before the model has loaded),
until enough kills landed while a job was claimed or no work is left; then one daemon works the queue to
its end and is stopped with SIGTERM. The checks: every good file has all its sidecars, byte-identical to
those of its copies (that proves them complete), every .srt and .json parses, every .json states the
decoded duration of its source; the corrupt files have a recorded failure; no temp file, no `running`
job, `PRAGMA integrity_check` ok, and extra transcriptions (sidecar sets written beyond the first per
file, from the daemon's log) at most the number of kills.

`burst`: an idle daemon with its model loaded; N copies of a short speech wav are written straight into
its folder within seconds; RSS of the daemon and its children is sampled every 0.5 s until N jobs are
done. The checks: exactly N jobs, all done, none written twice, RSS growth ≤ 300 MB over the idle value.

Both print a short table, write `--json FILE` when asked, and exit 0 when every check passes, else 1.
`tests/test_stress.py` runs both at CI sizes through the same functions. The model is the tiny random
SenseVoiceSmall (built into the work dir) unless `--model DIR` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import srt

from svdaemon import audio
from svdaemon.control import Command, ControlError, DaemonNotRunning, DaemonState, StatusSnapshot, request
from svdaemon.jobs import DB_NAME
from svdaemon.synthetic_speech import SAMPLE_RATE, SENTENCES, build_track

# tests/media.py holds the PyAV writers of the test media; the script shares them rather than copy them.
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from media import write_audio, write_random_bytes

log = logging.getLogger("svdaemon.stress")

MB = 1e6
RSS_GROWTH_LIMIT_MB = 300.0  # the bound on RSS growth during a burst
SETTLE_S = 0.3
POLL_S = 0.02  # status polling while waiting to kill
RSS_SAMPLE_S = 0.5
START_TIMEOUT_S = 180.0  # a daemon start (FunASR import, model load) on a busy machine
STOP_TIMEOUT_S = 30.0
ORPHAN_GRACE_S = 5.0
PACE_FILES = 3  # finished files timed at the first start, to scale kill moments to the machine
STARTUP_KILL_SHARE = 0.9  # start-up kills land in the first 90 % of the measured load time
SOURCE_FORMATS = ("wav", "flac", "mp3")
SIDECAR_FORMATS = ("txt", "srt", "json")
CONTENTS = (  # a few distinct speech contents, a few seconds each
    (0.3, SENTENCES[0], 0.3),
    (0.2, SENTENCES[1], 0.5, SENTENCES[2], 0.2),
    (0.5, SENTENCES[3], 0.2),
    (0.2, SENTENCES[4], 0.4, SENTENCES[5], 0.4, SENTENCES[6], 0.2),
)
BURST_CONTENT = (0.1, "Rain fell all night", 0.1)  # about one second
CORRUPT_FILES = ("corrupt-noise.wav", "corrupt-noise.mp3")
TEMP_GLOB = ".svdaemon-*.tmp"
_WROTE = re.compile(r" svdaemon\.sidecars: (?P<source>.+?): wrote ")


class StressError(RuntimeError):
    """The daemon did not do what the harness waits for (start, work, drain, stop) in time."""


@dataclass(frozen=True)
class Workspace:
    """One daemon's world: its config, the watched folder, its state folder, and its console output."""

    root: Path
    config: Path
    inbox: Path
    state_dir: Path

    @property
    def console(self) -> Path:
        return self.root / "daemon.out"


def prepare_workspace(root: Path, model_dir: Path) -> Workspace:
    """A config for CPU, quick settling, bad files failing at their first attempt, txt/srt/json."""
    inbox, state_dir = root / "inbox", root / "state"
    inbox.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    lines = [
        f"model: {json.dumps(str(model_dir))}",
        "device: cpu",
        "precision: fp32",
        f"state_dir: {json.dumps(str(state_dir))}",
        f"settle_s: {SETTLE_S}",
        "max_attempts: 1",
        "formats: [txt, srt, json]",
        "notify: false",
        "watch:",
        f"  - path: {json.dumps(str(inbox))}",
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Workspace(root, config, inbox, state_dir)


def ensure_model(work: Path) -> Path:
    """The tiny random SenseVoiceSmall under `work/model`, built once."""
    from svdaemon.synthetic_model import TINY, build_model_dir

    model_dir = work / "model"
    if not (model_dir / "model.pt").is_file():
        build_model_dir(model_dir, TINY, seed=0)
    return model_dir


# ---- the daemon process ---------------------------------------------------------------------------------


def start_daemon(ws: Workspace) -> subprocess.Popen:
    with ws.console.open("ab") as console:
        return subprocess.Popen(
            [sys.executable, "-m", "svdaemon.cli", "run", "--config", str(ws.config)],
            stdout=console,
            stderr=subprocess.STDOUT,
        )


def status(ws: Workspace) -> StatusSnapshot | None:
    """The daemon's snapshot, or None while nothing answers (not started yet, killed, stopping)."""
    try:
        return request(ws.state_dir, Command("status")).snapshot
    except (DaemonNotRunning, ControlError):
        return None


def wait_for_status(
    ws: Workspace, process: subprocess.Popen, condition: Callable[[StatusSnapshot], bool], what: str
) -> StatusSnapshot:
    """Poll the snapshot every POLL_S until `condition` holds; StressError if the daemon exits or stalls."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        snapshot = status(ws)
        if snapshot is not None and condition(snapshot):
            return snapshot
        if process.poll() is not None:
            raise StressError(f"the daemon exited ({process.returncode}) before {what}{console_tail(ws)}")
        time.sleep(POLL_S)
    raise StressError(f"no {what} within {START_TIMEOUT_S:.0f} s{console_tail(ws)}")


def console_tail(ws: Workspace, lines: int = 15) -> str:
    if not ws.console.exists():
        return ""
    said = ws.console.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(said)


def is_working(snapshot: StatusSnapshot) -> bool:
    """A job is claimed. `current_file` alone would miss most of a short file: it appears after a batch."""
    return snapshot.queue.get("running", 0) > 0 or snapshot.current_file is not None


def is_drained(snapshot: StatusSnapshot, files: int) -> bool:
    """Every file has a job and none is queued or running."""
    queue = snapshot.queue
    return sum(queue.values()) >= files and queue.get("queued", 0) == 0 and queue.get("running", 0) == 0


def stop_daemon(process: subprocess.Popen) -> int:
    """SIGTERM and the exit code (0 expected)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise StressError(f"the daemon did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM") from None


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively, from /proc/PID/task/*/children."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, children.read_text().split()):
                found += [child, *descendants(child)]
    return found


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` and all its descendants, in MB (10^6 bytes); a process that just went counts 0."""
    total_kb = 0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb * 1024 / MB


def is_alive(pid: int) -> bool:
    """Running and not a zombie (a container's init may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def killed_on_error(process: subprocess.Popen) -> Iterator[None]:
    """A harness failure must not leave a daemon running."""
    try:
        yield
    except BaseException:
        process.kill()
        process.wait()
        raise


def sigkill(process: subprocess.Popen) -> int:
    """SIGKILL the daemon; returns how many of its children outlived it by ORPHAN_GRACE_S (killed here)."""
    children = descendants(process.pid)
    process.kill()
    process.wait()
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while any(map(is_alive, children)) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    orphans = [child for child in children if is_alive(child)]
    for orphan in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
    if orphans:
        log.warning(
            "children %s of killed daemon %d still alive after %.0f s", orphans, process.pid, ORPHAN_GRACE_S
        )
    return len(orphans)


# ---- the state DB and the log, read from outside --------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    path: Path
    state: str
    last_error: str | None
    finished_at_s: float | None


@contextlib.contextmanager
def read_only_db(state_dir: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(f"file:{state_dir / DB_NAME}?mode=ro", uri=True)
    try:
        yield connection
    finally:
        connection.close()


def job_rows(state_dir: Path) -> list[JobRow]:
    with read_only_db(state_dir) as db:
        rows = db.execute("SELECT path, state, last_error, finished_at_s FROM jobs").fetchall()
    return [JobRow(Path(os.fsdecode(path)), state, error, finished) for path, state, error, finished in rows]


def integrity(state_dir: Path) -> str:
    with read_only_db(state_dir) as db:
        return "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))


def sidecar_writes(state_dir: Path) -> Counter[str]:
    """Sidecar sets written per source: the sidecar module logs one "SOURCE: wrote ..." line per set."""
    writes: Counter[str] = Counter()
    for log_file in state_dir.glob("svdaemon.log*"):
        with log_file.open(encoding="utf-8", errors="replace") as lines:
            writes.update(match["source"] for line in lines if (match := _WROTE.search(line)))
    return writes


def temp_files(*folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob(TEMP_GLOB)]


# ---- kill -9 --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    files: int = 40  # in the folder, the corrupt ones included
    kills: int = 30  # kills that land while a job is claimed
    startup_kills: int = 3  # kills before the model has loaded, counted apart
    span_files: float = 2.0  # kills land uniformly in the first file after a start and this many more
    seed: int = 0


@dataclass(frozen=True)
class Corpus:
    good: tuple[Path, ...]
    corrupt: tuple[Path, ...]

    @property
    def size(self) -> int:
        return len(self.good) + len(self.corrupt)


def make_kill_corpus(ws: Workspace, files: int) -> Corpus:
    """`files` files in the inbox: byte-identical copies of each content × format, and the corrupt ones."""
    staging = ws.root / "staging"
    staging.mkdir(exist_ok=True)
    masters = [
        write_audio(staging / f"c{index}.{fmt}", build_track(content).samples, SAMPLE_RATE)
        for index, content in enumerate(CONTENTS)
        for fmt in SOURCE_FORMATS
    ]
    good = []
    for number in range(files - len(CORRUPT_FILES)):
        master = masters[number % len(masters)]
        good.append(ws.inbox / f"f{number:04d}-{master.name}")
        shutil.copyfile(master, good[-1])
    corrupt = tuple(write_random_bytes(ws.inbox / name, seed=0) for name in CORRUPT_FILES)
    return Corpus(tuple(good), corrupt)


@dataclass(frozen=True)
class KillCounts:
    working: int = 0  # a job was claimed (running in the DB) when the kill landed
    startup: int = 0  # before the model had loaded
    idle: int = 0  # after work was seen, but nothing was claimed at the kill
    orphaned_children: int = 0  # children of a killed daemon alive 5 s later

    @property
    def total(self) -> int:
        return self.working + self.startup + self.idle


def still_loading_after(ws: Workspace, at_s: float) -> bool:
    """Wait `at_s` from now; True when the model is still loading then, False as soon as it has loaded."""
    deadline = time.monotonic() + at_s
    while time.monotonic() < deadline:
        snapshot = status(ws)
        if snapshot is not None and snapshot.state is not DaemonState.LOADING:
            return False
        time.sleep(POLL_S)
    return True


@dataclass(frozen=True)
class Pace:
    """How long the daemon takes per file, measured on itself, so kill moments scale with the machine."""

    first_file_s: float  # the first file after a start, warm-up included
    file_s: float  # each further file

    def window_s(self, span_files: float) -> float:
        return self.first_file_s + span_files * self.file_s


def measure_pace(ws: Workspace, process: subprocess.Popen, files: int) -> Pace:
    """Time a working daemon's next PACE_FILES finished files (its first after a start among them).

    A kill window fixed in seconds would, on a fast machine, let every kill run through many files and
    leave no work for the later kills, and on a slow one never get past the first file's warm-up.
    """
    began = time.monotonic()
    done = wait_for_status(ws, process, lambda s: True, "status").queue.get("done", 0)
    finished_at = []
    for count in range(done + 1, done + PACE_FILES + 1):
        snapshot = wait_for_status(
            ws, process, lambda s, n=count: s.queue.get("done", 0) >= n or is_drained(s, files), "done files"
        )
        if snapshot.queue.get("done", 0) < count:
            raise StressError(f"too few files to time the daemon: the queue drained after {count - 1}")
        finished_at.append(time.monotonic())
    pace = Pace(finished_at[0] - began, (finished_at[-1] - finished_at[0]) / (PACE_FILES - 1))
    log.info("pace: first file after a start %.2f s, then %.2f s per file", pace.first_file_s, pace.file_s)
    return pace


def crash_loop(ws: Workspace, corpus: Corpus, plan: KillPlan) -> tuple[KillCounts, subprocess.Popen]:
    """Start and SIGKILL the daemon until `plan.kills` kills landed while working or no work is left.

    Returns the counts and the daemon started last, still running, to work off the rest.
    """
    rng = random.Random(plan.seed)
    cycles = plan.kills + plan.startup_kills
    startup_cycles = set(rng.sample(range(1, cycles), min(plan.startup_kills, cycles - 1)))
    counts = KillCounts()
    load_s = 0.0
    pace = None
    for cycle in range(cycles * 4):  # idle kills repeat a cycle; this only bounds a daemon gone wrong
        process = start_daemon(ws)
        with killed_on_error(process):
            started = time.monotonic()
            if cycle in startup_cycles and still_loading_after(
                ws, rng.uniform(0, STARTUP_KILL_SHARE * load_s)
            ):
                orphans = sigkill(process)
                counts = _add(counts, startup=1, orphaned_children=orphans)
                continue
            wait_for_status(ws, process, lambda s: s.state is not DaemonState.LOADING, "model loaded")
            load_s = load_s or time.monotonic() - started
            snapshot = wait_for_status(
                ws, process, lambda s: is_working(s) or is_drained(s, corpus.size), "work or a drained queue"
            )
            if counts.working >= plan.kills or not is_working(snapshot):
                return counts, process
            pace = pace or measure_pace(ws, process, corpus.size)
            time.sleep(rng.uniform(0, pace.window_s(plan.span_files)))
            orphans = sigkill(process)
            claimed = any(row.state == "running" for row in job_rows(ws.state_dir))
            counts = _add(counts, working=int(claimed), idle=int(not claimed), orphaned_children=orphans)
            log.info("cycle %d: %s", cycle, counts)
    raise StressError(f"{cycles * 4} daemon starts without reaching {plan.kills} kills: {counts}")


def _add(counts: KillCounts, **more: int) -> KillCounts:
    return KillCounts(**{name: value + more.get(name, 0) for name, value in asdict(counts).items()})


@dataclass(frozen=True)
class KillChecks:
    """What the kill run left behind; every tuple empty and every count in bounds is a pass."""

    missing_sidecars: tuple[str, ...]
    unfinished: tuple[str, ...]  # good files whose job is not done or skipped
    corrupt_not_failed: tuple[str, ...]  # corrupt files without a failed job and its error
    unparsable: tuple[str, ...]
    wrong_duration: tuple[str, ...]
    differing: tuple[str, ...]  # sidecars that differ from those of a byte-identical source
    temp_files: tuple[str, ...]
    running_jobs: int
    integrity: str
    sidecar_writes: int
    extra_transcriptions: int  # sidecar sets written beyond the first per file


def check_kill_run(ws: Workspace, corpus: Corpus) -> KillChecks:
    rows = {row.path: row for row in job_rows(ws.state_dir)}
    writes = sidecar_writes(ws.state_dir)
    missing, unparsable, wrong_duration = [], [], []
    for source in corpus.good:
        missing += [str(path) for path in sidecar_set(source).values() if not path.is_file()]
    complete = [source for source in corpus.good if all(p.is_file() for p in sidecar_set(source).values())]
    durations: dict[str, float] = {}
    for source in complete:
        digest = file_digest(source)
        if digest not in durations:
            durations[digest] = decoded_duration_s(source)
        unparsable += filter(None, [parse_problem(sidecar_set(source))])
        wrong_duration += filter(None, [duration_problem(sidecar_set(source)["json"], durations[digest])])
    return KillChecks(
        missing_sidecars=tuple(missing),
        unfinished=tuple(
            f"{source}: {describe(rows.get(source))}"
            for source in corpus.good
            if rows.get(source) is None or rows[source].state not in ("done", "skipped")
        ),
        corrupt_not_failed=tuple(
            f"{source}: {describe(rows.get(source))}"
            for source in corpus.corrupt
            if rows.get(source) is None or rows[source].state != "failed" or not rows[source].last_error
        ),
        unparsable=tuple(unparsable),
        wrong_duration=tuple(wrong_duration),
        differing=tuple(differing_sidecars(complete)),
        temp_files=tuple(str(path) for path in temp_files(ws.inbox, ws.state_dir)),
        running_jobs=sum(row.state == "running" for row in rows.values()),
        integrity=integrity(ws.state_dir),
        sidecar_writes=sum(writes.values()),
        extra_transcriptions=sum(count - 1 for count in writes.values() if count > 1),
    )


def describe(row: JobRow | None) -> str:
    return "no job" if row is None else f"{row.state} ({row.last_error or 'no error recorded'})"


def sidecar_set(source: Path) -> dict[str, Path]:
    return {fmt: source.with_suffix(f".{fmt}") for fmt in SIDECAR_FORMATS}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decoded_duration_s(source: Path) -> float:
    """The duration the pipeline reports: decoded 16 kHz samples, rounded to the millisecond."""
    return round(sum(len(block) for block in audio.decode_blocks(source)) / audio.SAMPLE_RATE, 3)


def parse_problem(paths: dict[str, Path]) -> str | None:
    """Why this set's .srt or .json does not parse, or None."""
    parsers = {"srt": lambda text: list(srt.parse(text)), "json": json.loads}
    for fmt, parse in parsers.items():
        try:
            parse(paths[fmt].read_text(encoding="utf-8"))
        except (srt.SRTParseError, ValueError) as error:  # ValueError: bad UTF-8 or bad JSON
            return f"{paths[fmt]}: {error!r}"
    return None


def duration_problem(json_path: Path, duration_s: float) -> str | None:
    """A .json whose `duration_s` is not its source's decoded duration (or missing), or None."""
    try:
        stated = json.loads(json_path.read_text(encoding="utf-8"))["duration_s"]
    except (ValueError, KeyError, TypeError) as error:
        return f"{json_path}: no duration_s ({error!r})"
    if not isinstance(stated, (int, float)) or abs(stated - duration_s) > 5e-4:
        return f"{json_path}: duration_s {stated!r} but the source decodes to {duration_s} s"
    return None


def comparable(path: Path) -> bytes:
    """A sidecar's content with the one field that names its own source (.json `file`) left out."""
    data = path.read_bytes()
    if path.suffix != ".json":
        return data
    document = json.loads(data)
    document.pop("file", None)
    return json.dumps(document, sort_keys=True).encode()


def differing_sidecars(sources: list[Path]) -> Iterator[str]:
    """Sidecars unlike those of the first byte-identical source: a truncated or stale file shows here."""
    first_of: dict[str, Path] = {}
    for source in sources:
        reference = first_of.setdefault(file_digest(source), source)
        for fmt, path in sidecar_set(source).items():
            if reference != source and comparable(path) != comparable(sidecar_set(reference)[fmt]):
                yield f"{path} differs from {sidecar_set(reference)[fmt]}"


@dataclass(frozen=True)
class KillResult:
    plan: KillPlan
    kills: KillCounts
    checks: KillChecks
    final_exit_code: int
    elapsed_s: float

    def problems(self) -> list[str]:
        """Each failed check in words; empty when the run meets the issue's numbers."""
        checks = self.checks
        problems = [
            f"{name.replace('_', ' ')}: {len(found)}, e.g. {found[0]}"
            for name, found in asdict(checks).items()
            if isinstance(found, (tuple, list)) and found
        ]
        if self.kills.working < self.plan.kills:
            problems.append(f"only {self.kills.working} kills while working, {self.plan.kills} planned")
        if checks.running_jobs:
            problems.append(f"{checks.running_jobs} job(s) left running")
        if checks.integrity != "ok":
            problems.append(f"integrity_check: {checks.integrity}")
        if checks.extra_transcriptions > self.kills.total:
            problems.append(f"{checks.extra_transcriptions} extra transcriptions > {self.kills.total} kills")
        if self.kills.orphaned_children:
            problems.append(f"{self.kills.orphaned_children} decoder children outlived a killed daemon")
        if self.final_exit_code != 0:
            problems.append(f"SIGTERM exit code {self.final_exit_code}, expected 0")
        return problems


def run_kill(work: Path, model_dir: Path, plan: KillPlan) -> KillResult:
    """The whole kill -9 run in `work` (a fresh folder), checked."""
    started = time.monotonic()
    ws = prepare_workspace(work, model_dir)
    corpus = make_kill_corpus(ws, plan.files)
    counts, process = crash_loop(ws, corpus, plan)
    try:
        wait_for_status(ws, process, lambda s: is_drained(s, corpus.size), "drained queue")
    finally:
        exit_code = stop_daemon(process)
    return KillResult(plan, counts, check_kill_run(ws, corpus), exit_code, time.monotonic() - started)


# ---- burst ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BurstResult:
    files: int
    jobs: int  # rows in the queue
    done: int
    written_twice: int  # sources with more than one sidecar set written
    sidecar_writes: int
    baseline_rss_mb: float  # idle, model loaded
    peak_rss_mb: float
    create_s: float  # writing all files
    wall_s: float  # first file created → last job done
    audio_s: float
    final_exit_code: int

    @property
    def growth_mb(self) -> float:
        return self.peak_rss_mb - self.baseline_rss_mb

    @property
    def files_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def problems(self) -> list[str]:
        problems = []
        if self.jobs != self.files or self.done != self.files:
            problems.append(f"{self.jobs} jobs, {self.done} done, for {self.files} files")
        if self.written_twice:
            problems.append(f"{self.written_twice} file(s) written twice")
        if self.sidecar_writes < self.done:
            problems.append(
                f"the log shows {self.sidecar_writes} writes for {self.done} done jobs (rotated?)"
            )
        if self.growth_mb > RSS_GROWTH_LIMIT_MB:
            problems.append(f"RSS grew {self.growth_mb:.0f} MB > {RSS_GROWTH_LIMIT_MB:.0f} MB")
        if self.final_exit_code != 0:
            problems.append(f"SIGTERM exit code {self.final_exit_code}, expected 0")
        return problems


class RssSampler:
    """Peak RSS of a process tree, sampled at most every RSS_SAMPLE_S by whoever calls `sample`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._next = 0.0

    def sample(self) -> None:
        if time.monotonic() >= self._next:
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            self._next = time.monotonic() + RSS_SAMPLE_S


def run_burst(work: Path, model_dir: Path, files: int, timeout_s: float | None = None) -> BurstResult:
    """Drop `files` copies of a one-second wav into an idle daemon's folder; measure until all are done."""
    ws = prepare_workspace(work, model_dir)
    samples = build_track(BURST_CONTENT).samples
    data = write_audio(ws.root / "burst.wav", samples, SAMPLE_RATE).read_bytes()
    process = start_daemon(ws)
    try:
        wait_for_status(ws, process, lambda s: s.state is DaemonState.IDLE, "idle daemon")
        time.sleep(1.0)  # the watcher's first scan and the decoder child settle
        baseline_mb = rss_mb(process.pid)
        sampler = RssSampler(process.pid)
        first_created = time.time()
        for number in range(files):
            (ws.inbox / f"b{number:06d}.wav").write_bytes(data)
            sampler.sample()
        create_s = time.time() - first_created
        deadline = time.monotonic() + (timeout_s or 120 + files * 0.5)
        while time.monotonic() < deadline:
            sampler.sample()
            snapshot = status(ws)
            if snapshot is not None and is_drained(snapshot, files):
                break
            time.sleep(RSS_SAMPLE_S)
        else:
            log.error("burst: the queue did not drain within the time limit")
    finally:
        exit_code = stop_daemon(process)
    rows = job_rows(ws.state_dir)
    writes = sidecar_writes(ws.state_dir)
    done = [row for row in rows if row.state == "done"]
    last_done = max((row.finished_at_s or 0.0 for row in done), default=first_created)
    return BurstResult(
        files=files,
        jobs=len(rows),
        done=len(done),
        written_twice=sum(count > 1 for count in writes.values()),
        sidecar_writes=sum(writes.values()),
        baseline_rss_mb=baseline_mb,
        peak_rss_mb=max(sampler.peak_mb, baseline_mb),
        create_s=create_s,
        wall_s=last_done - first_created,
        audio_s=len(done) * len(samples) / SAMPLE_RATE,
        final_exit_code=exit_code,
    )


# ---- the script -----------------------------------------------------------------------------------------


def kill_table(result: KillResult) -> list[tuple[str, str]]:
    kills, checks = result.kills, result.checks
    return [
        ("files (corrupt)", f"{result.plan.files} ({len(CORRUPT_FILES)})"),
        ("kills while working", str(kills.working)),
        ("kills at start-up", str(kills.startup)),
        ("kills with nothing claimed", str(kills.idle)),
        ("missing sidecars", str(len(checks.missing_sidecars))),
        ("unparsable / wrong duration", f"{len(checks.unparsable)} / {len(checks.wrong_duration)}"),
        ("differing from a copy's", str(len(checks.differing))),
        ("corrupt without failure", str(len(checks.corrupt_not_failed))),
        ("temp files / running jobs", f"{len(checks.temp_files)} / {checks.running_jobs}"),
        ("integrity_check", checks.integrity),
        ("sidecar sets written", str(checks.sidecar_writes)),
        ("extra transcriptions", f"{checks.extra_transcriptions} (limit {kills.total})"),
        ("SIGTERM exit", str(result.final_exit_code)),
        ("elapsed", f"{result.elapsed_s:.0f} s"),
    ]


def burst_table(result: BurstResult) -> list[tuple[str, str]]:
    return [
        ("files", str(result.files)),
        ("jobs / done", f"{result.jobs} / {result.done}"),
        ("written twice", str(result.written_twice)),
        ("RSS idle → peak", f"{result.baseline_rss_mb:.0f} → {result.peak_rss_mb:.0f} MB"),
        ("RSS growth", f"{result.growth_mb:+.0f} MB (limit {RSS_GROWTH_LIMIT_MB:.0f})"),
        ("created in", f"{result.create_s:.1f} s"),
        ("first created → last done", f"{result.wall_s:.1f} s"),
        ("files/s", f"{result.files_per_s:.1f}"),
        ("× realtime", f"{result.realtime_factor:.1f}"),
        ("SIGTERM exit", str(result.final_exit_code)),
    ]


def report(rows: list[tuple[str, str]], problems: list[str]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    kill = modes.add_parser("kill", help="SIGKILL the daemon at random moments; check nothing is lost")
    kill.add_argument("--files", type=int, default=KillPlan.files)
    kill.add_argument("--kills", type=int, default=KillPlan.kills, help="kills while working")
    kill.add_argument("--startup-kills", type=int, default=KillPlan.startup_kills)
    kill.add_argument(
        "--span-files",
        type=float,
        default=KillPlan.span_files,
        help="kills land in the first file after a start and this many more",
    )
    kill.add_argument("--seed", type=int, default=KillPlan.seed)
    burst = modes.add_parser("burst", help="many files at once into an idle daemon; jobs and RSS")
    burst.add_argument("--files", type=int, default=20000)
    burst.add_argument("--timeout", type=float, help="seconds to wait for the queue to drain")
    for mode in (kill, burst):
        mode.add_argument("--work", type=Path, help="keep everything here (default: a temp dir)")
        mode.add_argument("--model", type=Path, help="model folder (default: the tiny random one)")
        mode.add_argument("--json", type=Path, help="write the result here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> bool:
    model_dir = args.model.absolute() if args.model else ensure_model(work)
    run_dir = work / f"{args.mode}-{time.strftime('%Y%m%dT%H%M%S')}"
    if args.mode == "kill":
        plan = KillPlan(args.files, args.kills, args.startup_kills, args.span_files, args.seed)
        result = run_kill(run_dir, model_dir, plan)
        rows = kill_table(result)
    else:
        result = run_burst(run_dir, model_dir, args.files, args.timeout)
        rows = burst_table(result)
    problems = result.problems()
    report(rows, problems)
    if args.json:
        summary = {"mode": args.mode, **asdict(result), "table": dict(rows), "problems": problems}
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return not problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            return 0 if run(args, args.work.absolute()) else 1
        with tempfile.TemporaryDirectory(prefix="svdaemon-stress-") as tmp:
            return 0 if run(args, Path(tmp)) else 1
    except StressError as error:
        log.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
