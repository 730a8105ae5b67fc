"""Sidecar files on a real file system: names, clashes, overwrite policy, atomic sets, modes, temp sweep."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from svdaemon.errors import EnvironmentFault, SidecarError
from svdaemon.owner import file_tag
from svdaemon.sidecars import (
    Action,
    Decision,
    HashStore,
    SidecarRecord,
    SidecarResult,
    SidecarSettings,
    Target,
    TargetKind,
    existing_sidecars_newer_than,
    plan,
    sidecar_paths,
    sweep_temp_files,
    write_sidecars,
)

from doubles import from_exited_process

REPO_ROOT = Path(__file__).resolve().parents[1]
SRT = "1\n00:00:00,000 --> 00:00:01,500\nhello there\n\n"
TEXTS = {"txt": "hello there\n", "srt": SRT}


@pytest.fixture
def store(tmp_path: Path) -> HashStore:
    return HashStore(tmp_path / "state")


def make_source(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really audio")
    return path


def write(source: Path, store: HashStore, texts: dict[str, str] = TEXTS, **settings: object) -> SidecarResult:
    root = settings.pop("root", None)
    language = settings.pop("language", "en")
    return write_sidecars(
        source, texts, language=language, settings=SidecarSettings(**settings), store=store, root=root
    )


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".svdaemon-")]


@pytest.mark.integration
def test_sidecars_land_beside_the_source_with_the_rendered_text(tmp_path: Path, store: HashStore) -> None:
    source = make_source(tmp_path / "in" / "talk.mp3")
    result = write(source, store)
    assert result == SidecarResult((tmp_path / "in" / "talk.txt", tmp_path / "in" / "talk.srt"))
    assert (tmp_path / "in" / "talk.srt").read_text(encoding="utf-8") == SRT
    assert (tmp_path / "in" / "talk.txt").read_text(encoding="utf-8") == "hello there\n"
    assert temp_files(tmp_path / "in") == []


@pytest.mark.integration
def test_output_dir_mirrors_the_watched_tree(tmp_path: Path, store: HashStore) -> None:
    root = tmp_path / "watched"
    source = make_source(root / "2024" / "june" / "talk.mp3")
    write(source, store, output_dir=tmp_path / "out", root=root)
    assert (tmp_path / "out" / "2024" / "june" / "talk.srt").read_text(encoding="utf-8") == SRT
    assert not (root / "2024" / "june" / "talk.srt").exists()


@pytest.mark.integration
def test_one_shot_file_lands_directly_in_output_dir(tmp_path: Path, store: HashStore) -> None:
    source = make_source(tmp_path / "somewhere" / "deep" / "talk.mp3")
    write(source, store, output_dir=tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["talk.srt", "talk.txt"]


@pytest.mark.integration
def test_source_outside_the_watched_folder_is_refused(tmp_path: Path, store: HashStore) -> None:
    source = make_source(tmp_path / "elsewhere" / "talk.mp3")
    with pytest.raises(SidecarError, match="not inside the watched folder"):
        write(source, store, output_dir=tmp_path / "out", root=tmp_path / "watched")


@pytest.mark.integration
def test_language_in_name_tags_speech_and_leaves_silence_untagged(tmp_path: Path, store: HashStore) -> None:
    talk = make_source(tmp_path / "talk.mp3")
    quiet = make_source(tmp_path / "quiet.mp3")
    write(talk, store, language_in_name=True, language="zh")
    write(quiet, store, language_in_name=True, language="")
    assert (tmp_path / "talk.zh.srt").is_file()
    assert (tmp_path / "talk.zh.txt").is_file()
    assert (tmp_path / "quiet.srt").is_file()


@pytest.mark.integration
def test_second_source_with_the_same_stem_gets_long_names(
    tmp_path: Path, store: HashStore, caplog: pytest.LogCaptureFixture
) -> None:
    mp3 = make_source(tmp_path / "talk.mp3")
    mp4 = make_source(tmp_path / "talk.mp4")
    write(mp3, store, texts={"txt": "from mp3\n", "srt": SRT})
    with caplog.at_level(logging.INFO, logger="svdaemon.sidecars"):
        written = write(mp4, store, texts={"txt": "from mp4\n", "srt": SRT}).written
    assert written == (tmp_path / "talk.mp4.txt", tmp_path / "talk.mp4.srt")
    assert any(str(mp4) in message and str(mp3) in message for message in caplog.messages)

    assert write(mp3, store, texts={"txt": "mp3 again\n", "srt": SRT}).written[0] == tmp_path / "talk.txt"
    assert write(mp4, store, texts={"txt": "mp4 again\n", "srt": SRT}).written[0] == tmp_path / "talk.mp4.txt"
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "mp3 again\n"
    assert (tmp_path / "talk.mp4.txt").read_text(encoding="utf-8") == "mp4 again\n"


@pytest.mark.integration
def test_one_clashing_format_moves_the_whole_set_to_long_names(tmp_path: Path, store: HashStore) -> None:
    write(make_source(tmp_path / "talk.mp3"), store, texts={"srt": SRT})
    written = write(make_source(tmp_path / "talk.mp4"), store, texts={"txt": "x\n", "srt": SRT}).written
    assert [path.name for path in written] == ["talk.mp4.txt", "talk.mp4.srt"]


@pytest.mark.integration
def test_short_names_of_a_source_that_is_gone_are_taken_over(tmp_path: Path, store: HashStore) -> None:
    mp3 = make_source(tmp_path / "talk.mp3")
    write(mp3, store)
    mp3.unlink()
    written = write(
        make_source(tmp_path / "talk.mp4"), store, texts={"txt": "from mp4\n", "srt": SRT}
    ).written
    assert written[0] == tmp_path / "talk.txt"
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "from mp4\n"


USERS_OWN = b"1\n00:00:00,000 --> 00:00:02,000\nthe user's own subtitles\n\n"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overwrite", "reason"),
    [("never", "exists; overwrite: never"), ("ours", "not written by svdaemon; overwrite: ours")],
)
def test_an_existing_file_the_policy_may_not_replace_is_kept_and_the_others_are_written(
    tmp_path: Path, store: HashStore, overwrite: str, reason: str
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    (tmp_path / "talk.srt").write_bytes(USERS_OWN)
    result = write(source, store, overwrite=overwrite)
    assert result.written == (tmp_path / "talk.txt",)
    assert result.kept == (Decision(tmp_path / "talk.srt", Action.KEEP, reason),)
    assert (tmp_path / "talk.srt").read_bytes() == USERS_OWN
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "hello there\n"
    assert store.get(tmp_path / "talk.srt") is None, "the user's file is not recorded as svdaemon's"
    assert temp_files(tmp_path) == []


@pytest.mark.integration
def test_overwrite_ours_replaces_its_own_sidecar_and_keeps_one_the_user_edited(
    tmp_path: Path, store: HashStore
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    write(source, store, texts={"txt": "first\n", "srt": SRT})
    assert write(source, store, texts={"txt": "second\n", "srt": SRT}).kept == ()
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "second\n"

    edited = SRT.replace("hello", "hullo").encode("utf-8")
    (tmp_path / "talk.srt").write_bytes(edited)
    record = store.get(tmp_path / "talk.srt")
    for text in ("third\n", "fourth\n"):  # kept every time, not only once
        result = write(source, store, texts={"txt": text, "srt": SRT})
        assert result.written == (tmp_path / "talk.txt",)
        assert result.kept_note() == "kept talk.srt (edited since svdaemon wrote it; overwrite: ours)"
        assert (tmp_path / "talk.srt").read_bytes() == edited
        assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == text
    assert store.get(tmp_path / "talk.srt") == record


@pytest.mark.integration
def test_when_every_format_is_kept_nothing_is_written_and_no_error_is_raised(
    tmp_path: Path, store: HashStore
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    for name in ("talk.txt", "talk.srt"):
        (tmp_path / name).write_bytes(USERS_OWN)
    result = write(source, store, overwrite="never")
    assert result.written == ()
    assert [decision.path.name for decision in result.kept] == ["talk.txt", "talk.srt"]
    assert result.kept_note() == (
        "kept talk.txt (exists; overwrite: never), talk.srt (exists; overwrite: never)"
    )
    assert sorted(os.listdir(tmp_path)) == ["state", "talk.mp3", "talk.srt", "talk.txt"]
    assert (tmp_path / "talk.txt").read_bytes() == USERS_OWN
    assert store.read_all() == {}


def fill_the_disk_at_the_second_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up when the second temp file of a set is synced (ENOSPC), as a real full disk would."""
    real_fsync = os.fsync
    calls = []

    def fsync_until_the_disk_is_full(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_the_disk_is_full)


@pytest.mark.integration
def test_the_formats_written_beside_a_kept_one_are_still_one_set(
    tmp_path: Path, store: HashStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    write(source, store, texts={"txt": "old\n", "srt": SRT, "vtt": "WEBVTT\n\nold\n"})
    (tmp_path / "talk.srt").write_bytes(USERS_OWN)
    fill_the_disk_at_the_second_fsync(monkeypatch)
    with pytest.raises(EnvironmentFault, match=r"talk\.vtt: No space left on device"):
        write(source, store, texts={"txt": "new\n", "srt": SRT, "vtt": "WEBVTT\n\nnew\n"})
    monkeypatch.undo()
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "old\n"
    assert (tmp_path / "talk.vtt").read_text(encoding="utf-8") == "WEBVTT\n\nold\n"
    assert (tmp_path / "talk.srt").read_bytes() == USERS_OWN
    assert temp_files(tmp_path) == []


@pytest.mark.integration
def test_overwrite_always_replaces_a_foreign_file(tmp_path: Path, store: HashStore) -> None:
    source = make_source(tmp_path / "talk.mp3")
    (tmp_path / "talk.srt").write_text("the user's own subtitles\n", encoding="utf-8")
    write(source, store, overwrite="always")
    assert (tmp_path / "talk.srt").read_text(encoding="utf-8") == SRT


@pytest.mark.integration
@pytest.mark.parametrize("overwrite", ["never", "ours", "always"])
def test_a_symlinked_sidecar_is_never_written_through(
    tmp_path: Path, store: HashStore, overwrite: str
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    precious = tmp_path / "elsewhere" / "precious.srt"
    precious.parent.mkdir()
    precious.write_text("precious\n", encoding="utf-8")
    (tmp_path / "talk.srt").symlink_to(precious)
    with pytest.raises(SidecarError, match="is a symbolic link; not written through"):
        write(source, store, overwrite=overwrite)
    assert precious.read_text(encoding="utf-8") == "precious\n"
    assert (tmp_path / "talk.srt").is_symlink()
    assert not (tmp_path / "talk.txt").exists()


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder an unprivileged user can reach: pytest's tmp_path lives under a root-only folder."""
    base = Path(tempfile.mkdtemp(prefix="svdaemon-sidecars-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def as_unprivileged(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run as nobody when we are root (root ignores permission bits), else as ourselves."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot test an unwritable folder")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [*prefix, sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.integration
def test_an_unwritable_output_dir_is_an_environment_fault_naming_file_and_folder(
    world_readable_dir: Path,
) -> None:
    base = world_readable_dir
    source = make_source(base / "in" / "talk.mp3")
    (base / "in").chmod(0o755)
    source.chmod(0o644)
    out = base / "out"
    out.mkdir(mode=0o555)
    state = base / "state"
    state.mkdir()
    state.chmod(0o777)
    probe = as_unprivileged(["-c", "import svdaemon.sidecars"], base)
    if probe.returncode != 0:
        pytest.skip(f"an unprivileged user cannot import svdaemon here: {probe.stderr.strip()[-200:]}")
    script = base / "write.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from pathlib import Path
            from svdaemon.errors import EnvironmentFault
            from svdaemon.sidecars import HashStore, SidecarSettings, write_sidecars
            source, out, state = map(Path, sys.argv[1:4])
            try:
                write_sidecars(source, {"txt": "hi\\n", "srt": ""}, language="en",
                               settings=SidecarSettings(output_dir=out), store=HashStore(state))
            except EnvironmentFault as error:
                print(error)
                sys.exit(3)
            """
        ),
        encoding="utf-8",
    )
    result = as_unprivileged([str(script), str(source), str(out), str(state)], base)
    assert result.returncode == 3, result.stderr
    assert f"{source}: cannot create a file in {out}: Permission denied" in result.stdout
    assert os.listdir(out) == []


@pytest.mark.integration
def test_disk_full_while_writing_the_second_format_leaves_the_old_set(
    tmp_path: Path, store: HashStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    write(source, store, texts={"txt": "old\n", "srt": "old srt\n"})
    records_before = store.read_all()
    fill_the_disk_at_the_second_fsync(monkeypatch)
    with pytest.raises(EnvironmentFault, match=r"talk\.srt: No space left on device"):
        write(source, store, texts={"txt": "new\n", "srt": "new srt\n"})
    monkeypatch.undo()
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "old\n"
    assert (tmp_path / "talk.srt").read_text(encoding="utf-8") == "old srt\n"
    assert temp_files(tmp_path) == []
    assert store.read_all() == records_before


@pytest.mark.integration
def test_files_and_new_folders_take_their_mode_from_the_umask(tmp_path: Path, store: HashStore) -> None:
    root = tmp_path / "watched"
    source = make_source(root / "sub" / "talk.mp3")
    previous = os.umask(0o027)
    try:
        write(source, store, output_dir=tmp_path / "out", root=root)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "sub" / "talk.srt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "sub").st_mode) == 0o750


@pytest.mark.integration
def test_sweep_removes_only_old_svdaemon_temp_files(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    old, fresh, foreign = tmp_path / ".svdaemon-old.tmp", tmp_path / ".svdaemon-new.tmp", tmp_path / "x.tmp"
    target = tmp_path / "target.txt"
    link = tmp_path / ".svdaemon-link.tmp"
    for path in (old, fresh, foreign, target):
        path.write_text("x", encoding="utf-8")
    link.symlink_to(target)
    for path in (old, foreign, target):
        os.utime(path, (now - 7200, now - 7200))
    os.utime(fresh, (now - 60, now - 60))
    os.utime(link, (now - 7200, now - 7200), follow_symlinks=False)

    assert sweep_temp_files(tmp_path, older_than_s=3600, now=now) == 1
    assert not old.exists()
    assert fresh.exists() and foreign.exists() and target.exists() and link.is_symlink()
    assert sweep_temp_files(tmp_path / "missing", now=now) == 0


@pytest.mark.integration
def test_sweep_removes_a_fresh_temp_at_once_when_its_writer_has_exited(tmp_path: Path) -> None:
    dead_tag = from_exited_process("file_tag()")
    abandoned = tmp_path / f".svdaemon-{dead_tag}-a1b2c3.tmp"
    in_progress = tmp_path / f".svdaemon-{file_tag()}-d4e5f6.tmp"
    for path in (abandoned, in_progress):
        path.write_text("half a subtitle", encoding="utf-8")
    assert sweep_temp_files(tmp_path) == 1
    assert not abandoned.exists() and in_progress.exists()


@pytest.mark.integration
def test_writing_sweeps_temps_a_crash_left_in_that_folder(tmp_path: Path, store: HashStore) -> None:
    crashed = tmp_path / ".svdaemon-crashed.tmp"
    crashed.write_text("half a subtitle", encoding="utf-8")
    os.utime(crashed, (1_000_000, 1_000_000))
    write(make_source(tmp_path / "talk.wav"), store)
    assert not crashed.exists()
    assert not list(tmp_path.glob(".svdaemon-*.tmp"))


@pytest.mark.integration
@pytest.mark.parametrize("name", ["-talk é 漢字.wav", "two  spaces.mp3", ".hidden.mp4"])
def test_unusual_names_get_their_sidecars(tmp_path: Path, store: HashStore, name: str) -> None:
    source = make_source(tmp_path / name)
    written = write(source, store).written
    stem = Path(name).stem
    assert [path.name for path in written] == [f"{stem}.txt", f"{stem}.srt"]
    assert all(path.is_file() for path in written)


@pytest.mark.integration
def test_a_name_that_is_not_utf8_round_trips_through_the_store(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    try:
        with open(os.path.join(folder, b"caf\xe9.wav"), "wb") as file:
            file.write(b"x")
    except OSError as error:
        pytest.skip(f"this file system refuses non-UTF-8 names: {error}")
    source = Path(os.fsdecode(os.path.join(folder, b"caf\xe9.wav")))
    write(source, HashStore(tmp_path / "state"))
    assert b"caf\xe9.srt" in os.listdir(folder)

    assert HashStore(tmp_path / "state").get(source.with_suffix(".srt")).source == source
    write(source, HashStore(tmp_path / "state"), texts={"txt": "again\n", "srt": SRT})
    assert (source.with_suffix(".txt")).read_text(encoding="utf-8") == "again\n"


@pytest.mark.integration
def test_existing_sidecars_newer_than_the_source(tmp_path: Path, store: HashStore) -> None:
    source = make_source(tmp_path / "talk.mp3")
    settings = SidecarSettings(language_in_name=True)

    def fresh(language: str | None, formats: tuple[str, ...] = ("txt", "srt")) -> bool:
        return existing_sidecars_newer_than(
            source, formats, language=language, settings=settings, store=store
        )

    assert not fresh(None)
    write(source, store, language_in_name=True, language="ja")
    assert fresh(None)
    assert fresh("ja")
    assert not fresh("zh")
    assert not fresh(None, ("txt", "srt", "json"))
    mtime = os.stat(tmp_path / "talk.ja.srt").st_mtime
    os.utime(source, (mtime + 10, mtime + 10))
    assert not fresh(None)


@pytest.mark.integration
def test_concurrent_writers_lose_no_record(tmp_path: Path, store: HashStore) -> None:
    sources = [make_source(tmp_path / f"talk{index}.mp3") for index in range(6)]
    errors: list[BaseException] = []

    def run(source: Path) -> None:
        try:
            write(source, store)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.read_all()) == 2 * len(sources)


@pytest.mark.integration
def test_an_unreadable_record_is_reported_and_its_sidecar_treated_as_not_ours(
    tmp_path: Path, store: HashStore, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    write(source, store)
    record_file = store.record_file(tmp_path / "talk.srt")
    record_file.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="svdaemon.sidecars"):
        assert store.get(tmp_path / "talk.srt") is None
    assert str(record_file) in caplog.text
    assert write(source, store).kept_note() == "kept talk.srt (not written by svdaemon; overwrite: ours)"
    write(make_source(tmp_path / "other.mp3"), store)
    assert {path.name for path in store.read_all()} == {"talk.txt", "other.txt", "other.srt"}


@pytest.mark.integration
def test_a_crash_between_recording_and_renaming_leaves_the_old_sidecars_ours(
    tmp_path: Path, store: HashStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / "talk.mp3")
    write(source, store, texts={"txt": "old\n", "srt": SRT})
    real_replace = os.replace

    def die_at_the_first_sidecar_rename(temp: str, target: Path) -> None:
        if Path(target).parent == tmp_path:
            raise KeyboardInterrupt  # stands for the process being killed right here
        real_replace(temp, target)

    monkeypatch.setattr(os, "replace", die_at_the_first_sidecar_rename)
    with pytest.raises(KeyboardInterrupt):
        write(source, store, texts={"txt": "new\n", "srt": SRT})
    monkeypatch.undo()
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "old\n"
    write(source, store, texts={"txt": "newer\n", "srt": SRT})
    assert (tmp_path / "talk.txt").read_text(encoding="utf-8") == "newer\n"


def test_plan_follows_the_overwrite_policy() -> None:
    own = Path("/x/own.srt")
    records = {own: SidecarRecord(("aa",), Path("/x/own.mp3"), 0.0)}
    targets = [
        Target(Path("/x/new.srt"), TargetKind.MISSING),
        Target(own, TargetKind.FILE, "aa"),
        Target(Path("/x/edited.srt"), TargetKind.FILE, "bb"),
        Target(Path("/x/link.srt"), TargetKind.SYMLINK),
        Target(Path("/x/dir.srt"), TargetKind.OTHER),
    ]
    actions = {
        overwrite: [decision.action for decision in plan(targets, overwrite=overwrite, records=records)]
        for overwrite in ("never", "ours", "always")
    }
    write_, replace, keep, refuse = Action.WRITE, Action.REPLACE, Action.KEEP, Action.REFUSE
    assert actions["never"] == [write_, keep, keep, refuse, refuse]
    assert actions["ours"] == [write_, replace, keep, refuse, refuse]
    assert actions["always"] == [write_, replace, replace, refuse, refuse]


def test_a_source_named_like_its_sidecar_is_never_overwritten() -> None:
    naming = sidecar_paths(
        Path("/x/notes.txt"), ["txt"], language="en", settings=SidecarSettings(), records={}
    )
    assert naming.paths["txt"] == Path("/x/notes.txt.txt")


def test_names_taken_twice_are_an_error() -> None:
    records = {
        Path("/x/talk.srt"): SidecarRecord(("aa",), Path("/x/talk.mp3"), 0.0),
        Path("/x/talk.mp3.srt"): SidecarRecord(("bb",), Path("/y/talk.mp3"), 0.0),
    }
    with pytest.raises(SidecarError, match="both belong to other files"):
        sidecar_paths(
            Path("/z/talk.mp3"),
            ["srt"],
            language="en",
            settings=SidecarSettings(output_dir=Path("/x")),
            records=records,
            exists=lambda path: True,
        )
