"""`svdaemon transcribe` at each CPU thread count, on a quiet machine and beside other busy processes.

    python bench/threads.py --minutes 2.2 --size tiny --busy 0,1 --json threads.json

What chose the default thread count (docs/benchmarks.md): each run is a fresh `svdaemon transcribe --device
cpu` of the same espeak-ng speech file, with `--threads N` or none (the default); `--busy K` runs K processes
that spin on a core each meanwhile, as a desktop's other programs would. The result line's × realtime
(decode, VAD, recognition; model load excluded) is what is reported, the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from svdaemon.bench import Workload, default_work_dir, ensure_model, make_audio

REALTIME = re.compile(r"([0-9.]+)× realtime")


def spin(stop_at: float) -> None:
    """One core kept busy until `stop_at` (a competitor, not measured)."""
    while time.monotonic() < stop_at:
        pass


def transcribe_realtime(model: Path, audio: Path, threads: int | None, out_dir: Path) -> float:
    """× realtime of one `svdaemon transcribe` run, from its result line."""
    command = [sys.executable, "-m", "svdaemon.cli", "transcribe", "--device", "cpu", "--model", str(model)]
    command += ["--overwrite", "always", "--output-dir", str(out_dir), str(audio)]
    if threads is not None:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    found = REALTIME.search(done.stdout)
    if found is None:
        raise RuntimeError(f"no result line in {done.stdout!r} {done.stderr[-500:]!r}")
    return float(found.group(1))


def measure(model: Path, audio: Path, threads: int | None, busy: int, repeats: int, out_dir: Path) -> float:
    """The best × realtime of `repeats` runs with `busy` spinning processes beside them."""
    results = []
    for _ in range(repeats):
        spinners = [
            multiprocessing.Process(target=spin, args=(time.monotonic() + 3600,), daemon=True)
            for _ in range(busy)
        ]
        for spinner in spinners:
            spinner.start()
        try:
            results.append(transcribe_realtime(model, audio, threads, out_dir))
        finally:
            for spinner in spinners:
                spinner.terminate()
                spinner.join()
    return max(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.2)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument(
        "--busy", default="0,1", help="comma list of how many cores other processes keep busy"
    )
    parser.add_argument("--threads", help="comma list of thread counts (default: 1 to all cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=default_work_dir())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    counts = [int(n) for n in args.threads.split(",")] if args.threads else list(range(1, cores + 1))
    model = ensure_model(args.work_dir, args.size)
    (audio,), _ = make_audio(args.work_dir, Workload(args.minutes))
    rows = []
    for busy in (int(n) for n in args.busy.split(",")):
        for threads in [None, *counts]:
            realtime = measure(model, audio, threads, busy, args.repeats, args.work_dir / "out")
            rows.append({"busy_cores": busy, "threads": threads or "default", "x_realtime": realtime})
            print(f"busy {busy}  threads {threads or 'default':>7}  {realtime:7.1f}× realtime", flush=True)
    if args.json:
        machine = {"cores": cores, "minutes": args.minutes, "model": args.size}
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
