"""The `svdaemon` command. Exit codes as contract.md fixes them: 0 ok, 1 some file failed, 2 start-up."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from svdaemon import __version__
from svdaemon.config import (
    CONFIG_ENV,
    FORMATS,
    LANGUAGES,
    OVERWRITE_POLICIES,
    PRECISIONS,
    Config,
    chosen_config_path,
    default_config_path,
    load_config,
)
from svdaemon.cpu_threads import prefer_passive_waits
from svdaemon.errors import ConfigError, StartupError, SvdaemonError
from svdaemon.models import ModelUnavailable
from svdaemon.status_text import device_precision_text, queue_text

if TYPE_CHECKING:
    from svdaemon.jobs import JobState
    from svdaemon.pipeline import FileProgress

log = logging.getLogger("svdaemon")

EXIT_OK, EXIT_FILES_FAILED, EXIT_STARTUP = 0, 1, 2


class _OwnRecordsOnly(logging.Filter):
    """FunASR logs chatter on the root logger, warnings included ("trust_remote_code: False"); keep its errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("svdaemon") or record.levelno >= logging.ERROR


def setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OwnRecordsOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


# ---- transcribe -------------------------------------------------------------------------------------


def _transcribe_overrides(args: argparse.Namespace) -> dict[str, object]:
    flags = {
        "model": args.model,
        "device": args.device,
        "precision": args.precision,
        "language": args.language,
        "formats": args.formats,
        "output_dir": args.output_dir,
        "overwrite": args.overwrite,
    }
    return {key: value for key, value in flags.items() if value is not None}


def _progress_bar(name: str, total_s: float) -> tuple[object | None, Callable[[FileProgress], None]]:
    """A per-file bar on a terminal; nothing otherwise (the result line says it all). It moves through both
    passes over the audio, the search for speech and the recognition, and names where each has got."""
    if not sys.stderr.isatty():
        return None, lambda seen: None
    from tqdm import tqdm

    bar = tqdm(
        total=100,
        desc=name,
        leave=False,
        file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
    )

    def update(seen: FileProgress) -> None:
        bar.set_postfix_str(
            f"speech searched {min(seen.searched_s, total_s):.0f} s, "
            f"recognised {min(seen.recognised_s, total_s):.0f} s of {total_s:.0f} s",
            refresh=False,
        )
        bar.update(round(100 * seen.fraction(total_s), 1) - bar.n)

    return bar, update


def cmd_transcribe(args: argparse.Namespace, config: Config) -> int:
    from svdaemon import audio
    from svdaemon.pipeline import Pipeline

    ready: list[tuple[Path, float]] = []
    failed = 0
    for name in args.files:
        path = Path(name)
        try:
            ready.append((path, audio.probe(path, config.audio_language).duration_s))
        except SvdaemonError as exc:
            print(f"FAIL  {exc}", flush=True)
            failed += 1
    if not ready:
        return EXIT_FILES_FAILED
    pipeline = Pipeline.load(config, threads=args.threads)
    for path, duration_s in ready:
        bar, progress = _progress_bar(path.name, duration_s)
        try:
            outcome = pipeline.process(path, root=path.parent, progress=progress)
        except SvdaemonError as exc:
            print(f"FAIL  {exc}", flush=True)
            log.debug("%s failed", path, exc_info=True)
            failed += 1
            continue
        finally:
            if bar is not None:
                bar.close()
        print(f"ok  {path.name}{outcome.describe(_duration(outcome.transcript.duration_s))}", flush=True)
    return EXIT_FILES_FAILED if failed else EXIT_OK


# ---- model fetch ------------------------------------------------------------------------------------


def cmd_model_fetch(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.engine import EngineSettings, SenseVoiceEngine
    from svdaemon.models import hub_repo, is_local, resolve_model_dir

    hub = args.hub or config.model_hub
    if not is_local(config.model):
        print(f"fetching {hub_repo(config.model, hub)} ({'Hugging Face' if hub == 'hf' else 'ModelScope'})")
    directory = resolve_model_dir(config.model, hub, download=True)
    engine = SenseVoiceEngine(
        EngineSettings(model_dir=directory, model_name=config.model, device="cpu", precision="fp32")
    )
    weights = len(engine.model.state_dict())
    print(f"ok  {config.model} in {directory} (all {weights} weights load from the checkpoint)")
    return EXIT_OK


# ---- doctor -----------------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.doctor import report

    lines, healthy = report(config, args.config)
    for line in lines:
        print(line)
    return EXIT_OK if healthy else EXIT_STARTUP


# ---- bench ------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.bench import run_bench

    return run_bench(args, config)


# ---- run --------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.daemon import Daemon

    return Daemon(config, args.config).run()


def cmd_tray(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.tray import main as tray_main

    return tray_main(config, sys.stderr)


def cmd_service(args: argparse.Namespace, config: Config) -> int:
    from svdaemon import service

    return service.main(
        args.action, kind=args.kind, enable=args.enable, config_path=args.config, state_dir=config.state_dir
    )


# ---- the queue and the running daemon (no torch: these answer within a second) ----------------------

EXIT_NO_DAEMON = 3


def _queue_counts(config: Config) -> dict[str, int]:
    from svdaemon.jobs import JobQueue

    with JobQueue.open(config.state_dir) as queue:
        return {state.value: count for state, count in queue.counts().items()}


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.control import Command, DaemonNotRunning, request

    try:
        snapshot = request(config.state_dir, Command("status")).snapshot
    except DaemonNotRunning:
        counts = _queue_counts(config)
        if args.json:
            print(json.dumps({"running": False, "queue": counts}))
        else:
            print(f"svdaemon is not running\nqueue: {queue_text(counts)}")
        return EXIT_NO_DAEMON
    assert snapshot is not None  # the server always answers status with a snapshot
    if args.json:
        print(json.dumps({"running": True, **snapshot.to_json()}))
        return EXIT_OK
    print(f"state: {snapshot.state.value} on {device_precision_text(snapshot.device, snapshot.precision)}")
    if snapshot.current_file:
        done = f" {snapshot.progress:.0%}" if snapshot.progress is not None else ""
        print(f"file: {snapshot.current_file}{done}")
    print(f"queue: {queue_text(snapshot.queue)}")
    if snapshot.vram_total_mb:
        print(
            f"VRAM: svdaemon {snapshot.vram_used_mb} MB; card {snapshot.vram_free_mb} MB free "
            f"of {snapshot.vram_total_mb} MB"
        )
    paused = f"yes ({snapshot.pause_reason})" if snapshot.paused and snapshot.pause_reason else "yes"
    print(f"paused: {paused if snapshot.paused else 'no'}")
    if snapshot.notice:
        print(f"note: {snapshot.notice}")
    if snapshot.last_error:
        print(f"last error: {snapshot.last_error}")
    return EXIT_OK


def cmd_control(args: argparse.Namespace, config: Config) -> int:
    """pause, resume, device NAME: one command to the running daemon."""
    from svdaemon.control import Command, DaemonNotRunning, request

    try:
        reply = request(config.state_dir, Command(args.command, getattr(args, "name", None)))
    except DaemonNotRunning:
        print("svdaemon is not running", file=sys.stderr)
        return EXIT_NO_DAEMON
    print(reply.message)
    return EXIT_OK if reply.ok else EXIT_FILES_FAILED


def cmd_queue(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.jobs import JobQueue, JobState

    with JobQueue.open(config.state_dir) as queue:
        jobs = queue.jobs([JobState.FAILED] if args.failed else None)
    if args.json:
        rows = [
            {
                "path": os.fsdecode(job.path),
                "state": job.state.value,
                "priority": job.priority,
                "attempts": job.attempts,
                "last_error": job.last_error,
            }
            for job in jobs
        ]
        print(json.dumps(rows, ensure_ascii=False))
        return EXIT_OK
    if not jobs:
        print("no failed files" if args.failed else "the queue is empty")
        return EXIT_OK
    print(f"{'STATE':<8} {'TRIES':>5}  FILE  (NOTE)")
    for job in jobs:
        error = f"  ({job.last_error})" if job.last_error else ""
        print(f"{job.state.value:<8} {job.attempts:>5}  {os.fsdecode(job.path)}{error}")
    return EXIT_OK


def _report_unknown(unknown: list[Path]) -> int:
    for path in unknown:
        print(f"unknown: {path} is not in the queue", file=sys.stderr)
    return EXIT_FILES_FAILED if unknown else EXIT_OK


def cmd_retry(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.jobs import JobQueue

    with JobQueue.open(config.state_dir) as queue:
        if args.all_failed:
            print(f"{queue.retry_all_failed()} failed job(s) queued again")
            return EXIT_OK
        if not args.paths:
            print("svdaemon retry: give PATH... or --all-failed", file=sys.stderr)
            return EXIT_STARTUP
        return _report_unknown(queue.retry([Path(p).absolute() for p in args.paths]))


def _bumped_line(path: Path, state: JobState) -> str:
    """What `bump` did to one known file: only a queued file has a place in the queue to move."""
    from svdaemon.jobs import JobState

    shown = os.fsdecode(path)
    if state is JobState.QUEUED:
        return f"moved to the front of the queue: {shown}"
    if state is JobState.RUNNING:
        return f"being transcribed now: {shown}"
    return f"{state.value} already, so not queued: {shown} (`svdaemon retry` queues it again)"


def cmd_bump(args: argparse.Namespace, config: Config) -> int:
    from svdaemon.jobs import JobQueue

    paths = [Path(p).absolute() for p in args.paths]
    with JobQueue.open(config.state_dir) as queue:
        unknown = queue.bump(paths)
        for path in paths:
            job = None if path in unknown else queue.get(path)
            if job is not None:
                print(_bumped_line(path, job.state))
    return _report_unknown(unknown)


# ---- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svdaemon", description="Transcribe recordings with SenseVoice Small."
    )
    parser.add_argument("--version", action="version", version=f"svdaemon {__version__}")
    config_help = f"config file (default: ${CONFIG_ENV}, else config.yaml in the user config dir)"
    verbose_help = "more log detail (-vv: debug)"
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)
    # The same options after the subcommand; SUPPRESS keeps a value given before it when they are absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = commands.add_parser("transcribe", parents=[common], help="write sidecars for each file and exit")
    tr.add_argument("files", nargs="+", metavar="FILE")
    tr.add_argument("--model", help="hub id or local model folder")
    tr.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--precision", choices=PRECISIONS)
    tr.add_argument("--language", choices=LANGUAGES)
    tr.add_argument("--formats", help=f"comma list of {', '.join(FORMATS)}")
    tr.add_argument("--output-dir", type=Path, help="write sidecars here instead of beside each file")
    tr.add_argument("--overwrite", choices=OVERWRITE_POLICIES)
    tr.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    tr.set_defaults(handler=cmd_transcribe)

    model = commands.add_parser("model", help="manage the SenseVoice model")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    fetch = model_commands.add_parser("fetch", parents=[common], help="download and verify the model")
    fetch.add_argument("--hub", choices=("ms", "hf"), help="ModelScope (ms) or Hugging Face (hf)")
    fetch.set_defaults(handler=cmd_model_fetch)

    doctor = commands.add_parser("doctor", parents=[common], help="report torch, CUDA, GPUs, model, PyAV")
    doctor.set_defaults(handler=cmd_doctor)

    bench = commands.add_parser("bench", parents=[common], help="svdaemon against FunASR on the same audio")
    bench.add_argument(
        "--minutes", type=float, default=10.0, help="minutes of synthetic speech per file (default 10)"
    )
    bench.add_argument("--files", type=int, default=1, help="how many files of that length (default 1)")
    bench.add_argument(
        "--format", choices=("wav", "mp3"), default="wav", help="the files' format (default wav)"
    )
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    bench.add_argument("--json", type=Path, help="also write the results as JSON here")
    bench.add_argument(
        "--rows",
        help="comma list of rows to run (default: all): funasr-whole, funasr-windows-loop, "
        "funasr-windows-batch (each also as ...-ncpu), funasr-fp16, svdaemon, svdaemon-daemon",
    )
    bench.add_argument("--work-dir", type=Path, help="where the random model and the audio files are kept")
    bench.set_defaults(handler=cmd_bench)

    run = commands.add_parser("run", parents=[common], help="the daemon in the foreground")
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser("status", parents=[common], help="the running daemon's state and the queue")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    for name, text in (("pause", "finish the current batch, then hold"), ("resume", "go on after pause")):
        commands.add_parser(name, parents=[common], help=text).set_defaults(handler=cmd_control)
    device = commands.add_parser("device", parents=[common], help="move the running daemon to another device")
    device.add_argument("name", metavar="NAME", help="cpu, cuda or cuda:N")
    device.set_defaults(handler=cmd_control)
    queue = commands.add_parser("queue", parents=[common], help="jobs in the state database")
    queue.add_argument("--failed", action="store_true", help="only failed jobs")
    queue.add_argument("--json", action="store_true")
    queue.set_defaults(handler=cmd_queue)
    retry = commands.add_parser("retry", parents=[common], help="queue files again")
    retry.add_argument("paths", nargs="*", metavar="PATH")
    retry.add_argument("--all-failed", action="store_true", help="every failed job")
    retry.set_defaults(handler=cmd_retry)
    bump = commands.add_parser("bump", parents=[common], help="move files to the front of the queue")
    bump.add_argument("paths", nargs="+", metavar="PATH")
    bump.set_defaults(handler=cmd_bump)

    tray = commands.add_parser("tray", parents=[common], help="the tray icon of the running daemon")
    tray.set_defaults(handler=cmd_tray)

    service = commands.add_parser("service", parents=[common], help="start svdaemon at login")
    service.add_argument("action", choices=["install", "uninstall", "status"])
    service.add_argument("--kind", choices=["systemd", "autostart", "launchd", "windows"])
    service.add_argument("--enable", action="store_true", help="also enable and start it now")
    service.set_defaults(handler=cmd_service)
    return parser


def _model_advice(config_path: Path | None) -> list[str]:
    """What a new user can do when the model cannot be had: where the config is, the other hub, a folder."""
    where = config_path or default_config_path()
    exists = "" if where.exists() else " (none yet: create it to change a setting)"
    return [
        f"  config file: {where}{exists}",
        "  to download from Hugging Face instead, put `model_hub: hf` in it;",
        "  to use a SenseVoiceSmall folder you downloaded, put `model: /path/to/that/folder` in it;",
        "  `svdaemon model fetch` downloads and checks the model (run it again to retry).",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = chosen_config_path(args.config)
    if args.command in ("transcribe", "run"):
        prefer_passive_waits()
    setup_logging(
        args.verbose + (1 if args.command in ("run", "tray") else 0)
    )  # long-lived: say what it does
    try:
        config = load_config(
            args.config, _transcribe_overrides(args) if args.command == "transcribe" else None
        )
        return args.handler(args, config)
    except ModelUnavailable as exc:
        print(f"svdaemon: {exc}", *_model_advice(args.config), sep="\n", file=sys.stderr)
        return EXIT_STARTUP
    except (ConfigError, StartupError) as exc:
        print(f"svdaemon: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        print("svdaemon: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
