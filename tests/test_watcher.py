"""Watcher: the skip policy, the settle check and the scan as plain data; then real observers on tmp folders."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.observers import inotify_c

from svdaemon import watcher as watcher_module
from svdaemon.config import WatchRoot
from svdaemon.watcher import (
    FolderWatcher,
    SettleTracker,
    is_candidate,
    needs_polling,
    scan_root,
    skip_reason,
    use_polling,
)

from doubles import wait_for

ROOT = Path("/media/in")


# --- names, globs, hidden, temp, output folders -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["talk.mp4", "TALK.MP4", "a/b/memo.m4a", "song.flac", "clip.MkV", "call.amr", "x.3gp", "näme ü.opus"],
)
def test_media_files_are_candidates(name: str) -> None:
    assert is_candidate(ROOT / name, WatchRoot(ROOT), [])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("talk.srt", "not an audio or video file"),
        ("talk.txt", "not an audio or video file"),
        ("talk.json", "not an audio or video file"),
        ("talk.vtt", "not an audio or video file"),
        ("README", "not an audio or video file"),
        ("x.mp4.part", "temporary or partial file"),
        ("x.mp4.crdownload", "temporary or partial file"),
        ("x.mp4.tmp", "temporary or partial file"),
        ("~$talk.mp4", "temporary or partial file"),
        (".syncthing.talk.mp4.tmp", "temporary or partial file"),
        (".svdaemon-talk.srt.tmp", "temporary or partial file"),
        (".talk.mp4.Ab3xQ9", "temporary or partial file"),
        (".talk.mp4", "hidden"),
        (".cache/talk.mp4", "hidden"),
        ("a/.trash/b/talk.mp4", "hidden"),
    ],
)
def test_sidecars_temp_and_hidden_files_are_skipped(name: str, reason: str) -> None:
    assert skip_reason(ROOT / name, WatchRoot(ROOT), []) == reason


def test_files_under_an_output_folder_are_skipped() -> None:
    out = ROOT / "subs"
    assert skip_reason(out / "talk.mp4", WatchRoot(ROOT), [out]) == "inside an output folder"
    root = WatchRoot(ROOT, output_dir=ROOT / "done")
    assert skip_reason(ROOT / "done" / "x" / "talk.mp4", root, []) == "inside an output folder"
    assert is_candidate(ROOT / "donee" / "talk.mp4", root, [])


def test_include_and_exclude_match_the_name_or_the_path_below_the_root() -> None:
    root = WatchRoot(ROOT, include=("*.mp4", "calls/*"), exclude=("*raw*", "calls/old/*"))
    assert is_candidate(ROOT / "talk.mp4", root, [])
    assert is_candidate(ROOT / "calls" / "a.wav", root, [])
    assert skip_reason(ROOT / "talk.wav", root, []) == "not matched by include"
    assert skip_reason(ROOT / "talk-raw.mp4", root, []) == "matched by exclude"
    assert skip_reason(ROOT / "calls" / "old" / "a.wav", root, []) == "matched by exclude"


def test_non_recursive_root_takes_only_its_top_level() -> None:
    root = WatchRoot(ROOT, recursive=False)
    assert is_candidate(ROOT / "talk.mp4", root, [])
    assert (
        skip_reason(ROOT / "sub" / "talk.mp4", root, []) == "in a subfolder of a non-recursive watched folder"
    )


def test_a_path_outside_the_root_is_not_a_candidate() -> None:
    assert not is_candidate(Path("/elsewhere/talk.mp4"), WatchRoot(ROOT), [])


# --- settle ---------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeFiles:
    """A tiny file table standing in for os.stat: path -> (size, mtime_ns, inode)."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[int, int, int]] = {}

    def stat(self, path: str) -> os.stat_result:
        if path not in self.table:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        size, mtime_ns, inode = self.table[path]
        return os.stat_result((0o100644, inode, 1, 1, 0, 0, size, 0, mtime_ns // 10**9, 0, 0, mtime_ns, 0))


@pytest.fixture
def settle() -> tuple[SettleTracker, FakeClock, FakeFiles]:
    clock, files = FakeClock(), FakeFiles()
    return SettleTracker(5.0, clock, stat=files.stat), clock, files


def test_a_file_is_ready_once_unchanged_for_settle_s_and_only_once(settle) -> None:
    tracker, clock, files = settle
    files.table["/a.mp4"] = (100, 1, 7)
    tracker.observe(Path("/a.mp4"), files.stat("/a.mp4"))
    clock.now += 4.9
    assert tracker.ready() == []
    clock.now += 0.1
    [(path, st)] = tracker.ready()
    assert path == Path("/a.mp4") and st.st_size == 100
    tracker.mark_reported(path, st)
    tracker.observe(Path("/a.mp4"), files.stat("/a.mp4"))  # a rescan sees it again, unchanged
    clock.now += 10
    assert tracker.ready() == []


def test_a_slow_writer_is_never_ready_until_it_stops(settle) -> None:
    tracker, clock, files = settle
    files.table["/slow.wav"] = (0, 0, 3)
    tracker.observe(Path("/slow.wav"), files.stat("/slow.wav"))
    for second in range(1, 21):  # 1 MB/s for 20 s
        clock.now += 1
        files.table["/slow.wav"] = (second * 1_000_000, second * 10**9, 3)
        assert tracker.ready() == []
    clock.now += 4.9
    assert tracker.ready() == []
    clock.now += 0.1
    assert [p for p, _ in tracker.ready()] == [Path("/slow.wav")]


def test_a_changed_or_replaced_file_settles_again(settle) -> None:
    tracker, clock, files = settle
    files.table["/a.mp4"] = (100, 1, 7)
    tracker.observe(Path("/a.mp4"), files.stat("/a.mp4"))
    clock.now += 5
    [(path, st)] = tracker.ready()
    tracker.mark_reported(path, st)
    files.table["/a.mp4"] = (100, 1, 8)  # same size and mtime, new inode: replaced
    tracker.observe(Path("/a.mp4"), files.stat("/a.mp4"))
    clock.now += 5
    assert [p for p, _ in tracker.ready()] == [Path("/a.mp4")]


def test_a_file_that_disappears_is_dropped(settle) -> None:
    tracker, clock, files = settle
    files.table["/gone.mp4"] = (100, 1, 7)
    tracker.observe(Path("/gone.mp4"), files.stat("/gone.mp4"))
    del files.table["/gone.mp4"]
    clock.now += 1
    assert tracker.ready() == []
    assert tracker.pending == 0


def test_forget_missing_lets_a_file_deleted_and_recreated_be_reported_again(settle) -> None:
    tracker, clock, files = settle
    files.table["/r/a.mp4"] = (100, 1, 7)
    tracker.observe(Path("/r/a.mp4"), files.stat("/r/a.mp4"))
    clock.now += 5
    [(path, st)] = tracker.ready()
    tracker.mark_reported(path, st)
    tracker.forget_missing(Path("/r"), seen=set())
    tracker.observe(path, st)
    clock.now += 5
    assert [p for p, _ in tracker.ready()] == [path]


# --- scan -------------------------------------------------------------------------------------------------------


def test_scan_skips_what_the_policy_skips_and_walks_subfolders(tmp_path: Path) -> None:
    for name in (
        "a.mp4",
        "b.srt",
        "sub/c.wav",
        ".hidden/d.mp3",
        "out/e.mp4",
        "f.mp4.part",
        "sub/deeper/g.MOV",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = sorted(
        p.relative_to(tmp_path).as_posix() for p, _ in scan_root(WatchRoot(tmp_path), [tmp_path / "out"])
    )
    assert found == ["a.mp4", "sub/c.wav", "sub/deeper/g.MOV"]
    flat = [p.name for p, _ in scan_root(WatchRoot(tmp_path, recursive=False), [])]
    assert flat == ["a.mp4"]


def test_scan_ends_on_a_symlink_loop_and_reports_each_folder_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a")
    found = [p for p, _ in scan_root(WatchRoot(tmp_path), [])]
    assert found == [tmp_path / "a" / "x.mp4"]


def test_scan_takes_non_utf8_names(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.mp4")
    (tmp_path / name).write_bytes(b"x")
    [(path, _)] = scan_root(WatchRoot(tmp_path), [])
    assert os.fsencode(path.name) == b"caf\xe9.mp4"
    assert path.exists()


def test_scan_goes_on_past_unreadable_and_vanished_entries() -> None:
    tree = {"/r": ["a.mp4", "locked", "vanished.mp4"], "/r/locked": PermissionError(errno.EACCES, "denied")}

    def listdir(path: str) -> list[str]:
        entry = tree[path]
        if isinstance(entry, Exception):
            raise entry
        return entry

    def stat(path: str) -> os.stat_result:
        if path == "/r/vanished.mp4":
            raise FileNotFoundError(errno.ENOENT, "gone", path)
        mode = 0o040755 if path in tree else 0o100644
        return os.stat_result((mode, hash(path) & 0xFFFF, 1, 1, 0, 0, 1, 0, 0, 0))

    found = [p for p, _ in scan_root(WatchRoot(Path("/r")), [], listdir=listdir, stat=stat)]
    assert found == [Path("/r/a.mp4")]


# --- mounts -------------------------------------------------------------------------------------------------------

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
//nas/share /mnt/nas cifs rw,vers=3.0 0 0
/dev/sdb1 /mnt/nas/local ext4 rw 0 0
server:/export /srv/nfs nfs4 rw 0 0
me@host:/ /home/me/remote fuse.sshfs rw 0 0
/dev/sdc1 /media/usb\\040stick vfat rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/me/Transcribe", False),
        ("/mnt/nas/rec", True),
        ("/mnt/nas/local/rec", False),  # the longest matching mount point decides
        ("/mnt/nasty", False),
        ("/srv/nfs/a", True),
        ("/home/me/remote/talks", True),
        ("/media/usb stick/rec", False),
    ],
)
def test_network_mounts_need_polling(path: str, expected: bool) -> None:
    assert needs_polling(Path(path), MOUNTS) is expected


def test_polling_setting_forces_or_forbids() -> None:
    assert use_polling(WatchRoot(Path("/home/x"), polling=True), MOUNTS)
    assert not use_polling(WatchRoot(Path("/mnt/nas/x"), polling=False), MOUNTS)
    assert use_polling(WatchRoot(Path("/mnt/nas/x")), MOUNTS)


# --- real observers ---------------------------------------------------------------------------------------------


class Reports:
    """Collects on_ready calls from the watcher thread."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._lock = threading.Lock()

    def __call__(self, path: Path, root: WatchRoot, st: os.stat_result) -> None:
        with self._lock:
            self.paths.append(path)

    def snapshot(self) -> list[Path]:
        with self._lock:
            return list(self.paths)


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Callable[..., tuple[Reports, FolderWatcher]]]:
    started: list[FolderWatcher] = []

    def start(*roots: WatchRoot, rescan_interval_s: float = 60.0) -> tuple[Reports, FolderWatcher]:
        reports = Reports()
        watcher = FolderWatcher(
            roots, [], reports, settle_s=0.3, rescan_interval_s=rescan_interval_s, tick_s=0.1
        )
        watcher.start()
        started.append(watcher)
        return reports, watcher

    yield start
    for watcher in started:
        watcher.stop()


def write(path: Path, data: bytes = b"\0" * 1000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def settle_then(reports: Reports, expected: list[Path]) -> None:
    """Waits for the expected reports, then a little longer to catch any duplicate."""
    assert wait_for(lambda: sorted(reports.snapshot()) == sorted(expected)), reports.snapshot()
    time.sleep(0.8)
    assert sorted(reports.snapshot()) == sorted(expected)


@pytest.mark.integration
def test_a_dropped_file_is_reported_once_after_settling(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    root.mkdir()
    reports, _ = watch(WatchRoot(root), rescan_interval_s=0.5)  # rescans must not report it again
    write(root / "talk.mp4")
    settle_then(reports, [root / "talk.mp4"])


@pytest.mark.integration
def test_files_present_at_start_are_found_by_the_first_scan(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    write(root / "old.wav")
    write(root / "sub" / "older.flac")
    reports, _ = watch(WatchRoot(root))
    settle_then(reports, [root / "old.wav", root / "sub" / "older.flac"])


@pytest.mark.integration
def test_a_folder_of_50_recordings_moved_in_gives_50_reports(tmp_path: Path, watch) -> None:
    root, outside = tmp_path / "in", tmp_path / "staging"
    root.mkdir()
    for i in range(50):
        write(outside / "batch" / f"rec{i:02}.m4a")
    reports, _ = watch(WatchRoot(root))
    time.sleep(0.3)
    (outside / "batch").rename(root / "batch")
    settle_then(reports, [root / "batch" / f"rec{i:02}.m4a" for i in range(50)])


@pytest.mark.integration
def test_a_partial_download_renamed_into_place_is_reported_once(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    root.mkdir()
    reports, _ = watch(WatchRoot(root))
    part = root / "x.mp4.part"
    write(part, b"a" * 500)
    with part.open("ab") as f:
        f.write(b"b" * 500)
    part.rename(root / "x.mp4")
    settle_then(reports, [root / "x.mp4"])


@pytest.mark.integration
def test_hidden_and_temp_files_are_never_reported(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    root.mkdir()
    reports, _ = watch(WatchRoot(root), rescan_interval_s=0.3)
    for name in (".x.mp4", ".trash/y.mp4", "z.mp4.crdownload", ".svdaemon-a.srt.tmp", ".talk.mp4.Ab3xQ9"):
        write(root / name)
    write(root / "real.wav")
    settle_then(reports, [root / "real.wav"])


@pytest.mark.integration
def test_a_symlink_loop_in_a_root_does_not_hang_the_watcher(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "loop").symlink_to(root)
    write(root / "a" / "x.mp4")
    reports, _ = watch(WatchRoot(root), rescan_interval_s=0.3)
    settle_then(reports, [root / "a" / "x.mp4"])


@pytest.mark.integration
def test_a_root_missing_at_start_is_watched_once_it_appears(tmp_path: Path, watch, caplog) -> None:
    root = tmp_path / "later"
    with caplog.at_level(logging.WARNING, logger="svdaemon.watcher"):
        reports, _ = watch(WatchRoot(root))
        assert wait_for(lambda: any("is missing" in r.getMessage() for r in caplog.records))
    root.mkdir()
    write(root / "first.mp4")
    assert wait_for(lambda: reports.snapshot() == [root / "first.mp4"])
    time.sleep(0.3)
    write(root / "second.mp4")  # found by an event: the root is really watched now
    settle_then(reports, [root / "first.mp4", root / "second.mp4"])


@pytest.mark.integration
def test_a_root_that_disappears_and_comes_back_is_watched_again(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    write(root / "a.mp4")
    reports, _ = watch(WatchRoot(root))
    assert wait_for(lambda: reports.snapshot() == [root / "a.mp4"])
    root.rename(tmp_path / "away")
    time.sleep(0.5)
    root.mkdir()
    time.sleep(0.5)
    write(root / "b.mp4")
    settle_then(reports, [root / "a.mp4", root / "b.mp4"])


@pytest.mark.integration
def test_a_polling_root_reports_new_files(tmp_path: Path, watch) -> None:
    root = tmp_path / "nas"
    root.mkdir()
    reports, _ = watch(WatchRoot(root, polling=True))
    time.sleep(0.3)
    write(root / "sub" / "call.wav")
    settle_then(reports, [root / "sub" / "call.wav"])


@pytest.mark.integration
def test_at_the_inotify_watch_limit_the_root_is_polled(tmp_path: Path, watch, caplog, monkeypatch) -> None:
    def watch_limit_reached(fd: int, path: bytes, mask: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(inotify_c, "inotify_add_watch", watch_limit_reached)
    root = tmp_path / "in"
    root.mkdir()
    with caplog.at_level(logging.WARNING, logger="svdaemon.watcher"):
        reports, _ = watch(WatchRoot(root, polling=False))
        assert wait_for(lambda: any("fs.inotify.max_user_watches" in r.getMessage() for r in caplog.records))
    write(root / "talk.mp4")
    settle_then(reports, [root / "talk.mp4"])


@pytest.mark.integration
def test_an_inotify_overflow_logged_by_watchdog_triggers_a_rescan(tmp_path: Path, watch, caplog) -> None:
    root = tmp_path / "in"
    root.mkdir()
    _, _ = watch(WatchRoot(root))
    with caplog.at_level(logging.INFO, logger="svdaemon.watcher"):
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert wait_for(lambda: any("rescanning" in r.getMessage() for r in caplog.records))


@pytest.mark.integration
def test_a_new_subfolder_unwatchable_at_the_limit_moves_the_root_to_polling(
    tmp_path: Path, watch, caplog, monkeypatch
) -> None:
    real_add_watch = inotify_c.inotify_add_watch

    def limit_reached_for_deep(fd: int, path: bytes, mask: int) -> int:
        if b"deep" in path:
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real_add_watch(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", limit_reached_for_deep)
    root = tmp_path / "in"
    root.mkdir()
    with caplog.at_level(logging.WARNING, logger="svdaemon.watcher"):
        reports, _ = watch(WatchRoot(root, polling=False))
        time.sleep(0.3)
        (root / "deep").mkdir()  # watchdog fails to watch it and says nothing
        assert wait_for(lambda: any("fs.inotify.max_user_watches" in r.getMessage() for r in caplog.records))
    write(root / "deep" / "later.mp4")  # no inotify watch here: only polling can see it
    settle_then(reports, [root / "deep" / "later.mp4"])


@pytest.mark.integration
def test_a_dropped_file_with_a_non_utf8_name_is_reported(tmp_path: Path, watch) -> None:
    root = tmp_path / "in"
    root.mkdir()
    reports, _ = watch(WatchRoot(root))
    time.sleep(0.2)
    name = os.fsdecode(b"r\xe9union.wav")
    write(root / name)
    settle_then(reports, [root / name])


@pytest.mark.integration
def test_a_full_scan_says_how_far_it_got_and_then_nothing(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "in"
    for i in range(5):
        write(root / f"rec{i}.wav")
    monkeypatch.setattr(watcher_module, "SCAN_REPORT_EVERY", 2)
    watcher = FolderWatcher([WatchRoot(root)], [], Reports(), settle_s=0.3, rescan_interval_s=60.0)
    seen: list[str | None] = []
    observe = watcher._tracker.observe  # private, as `_scan`: the only place a scan in progress shows

    def observing(path, st):
        seen.append(watcher.scanning)
        observe(path, st)

    monkeypatch.setattr(watcher._tracker, "observe", observing)
    watcher._scan(WatchRoot(root))
    two, four = (f"scanning {root}: {n} recordings so far" for n in (2, 4))
    assert seen == [None, None, two, two, four]
    assert watcher.scanning is None
