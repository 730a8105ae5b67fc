"""Sidecar files: where they go, whether they may be replaced, and writing one set of them atomically.

Rendering happens elsewhere; this module receives the finished text per format and owns only the files:
their names (with the rule for two sources that share a stem), the overwrite policy (with hashes of what
svdaemon wrote, kept in `state_dir`), and writes that leave the old set or the new set, never a mix and
never anything written through a symbolic link.

A sidecar the overwrite policy may not replace (a file svdaemon did not write, one the user edited, any
existing file under `never`) is the user's decision, not a fault: it is kept as it is, the other formats
are written, and the result says which were kept. A symbolic link or something that is not a file at a
sidecar path is no choice the policy speaks to: it stays an error (SidecarError), shown where the user
looks for failures.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from svdaemon.config import FORMATS, LANGUAGES
from svdaemon.errors import EnvironmentFault, SidecarError
from svdaemon.owner import file_tag, tagged_writer_is_dead

log = logging.getLogger(__name__)

Overwrite = Literal["never", "ours", "always"]

ERROR_SIDECAR = "error.txt"  # `name.error.txt`, written for a file that failed when error_sidecar is on
TEMP_PREFIX = ".svdaemon-"
TEMP_SUFFIX = ".tmp"
SPOKEN_LANGUAGES = tuple(language for language in LANGUAGES if language != "auto")
_UNTAGGED_LANGUAGES = ("", "nospeech")
# Trouble with the disk or the output folder (full, read-only, no permission, a file where a folder should
# be) is never the recording's fault: it is retried later, after the user or time has fixed it.
_ENVIRONMENT_TROUBLE = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
)
_STORE_SCHEMA = 1


@dataclass(frozen=True)
class SidecarSettings:
    """The sidecar part of the configuration; `output_dir` None means beside the source."""

    output_dir: Path | None = None
    language_in_name: bool = False
    overwrite: Overwrite = "ours"


@dataclass(frozen=True)
class SidecarRecord:
    """What svdaemon wrote at one sidecar path: lets `ours` tell its own files from the user's.

    `sha256s` holds the content it last wrote and, when that replaced content of its own, the one before:
    the record is saved before the renames, so a crash between the two leaves either on disk, both ours.
    """

    sha256s: tuple[str, ...]
    source: Path
    written_at: float


class RecordLookup(Protocol):
    """Where naming and the overwrite policy look up what svdaemon wrote: a `HashStore` or, in tests, a dict."""

    def get(self, path: Path) -> SidecarRecord | None: ...


class HashStore:
    """Sidecar path → record, shared by the daemon and one-shot commands: one small file per sidecar.

    A record lives in `state_dir/sidecars/<xx>/<sha256 of the path's bytes>.json`, so a lookup or an update
    costs the same with ten sidecars as with a hundred thousand. Paths are stored as the hex of their
    bytes so that names which are not UTF-8 survive. Writers hold an exclusive flock around
    read-modify-write; readers need no lock because record files are only ever replaced whole.
    """

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "sidecars"
        self._lock_path = Path(state_dir) / "sidecars.lock"

    def record_file(self, path: Path) -> Path:
        digest = hashlib.sha256(os.fsencode(_absolute(path))).hexdigest()
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, path: Path) -> SidecarRecord | None:
        path = _absolute(path)
        record_file = self.record_file(path)
        with _reported(f"cannot read {record_file}"):
            try:
                raw = record_file.read_bytes()
            except FileNotFoundError:
                return None
        found = self._parse(record_file, raw)
        return found[1] if found is not None and found[0] == path else None

    def sweep(self) -> None:
        """Remove the temps a crashed writer left among the records (at daemon start)."""
        for folder in self.folder.glob("??"):
            _sweep_once(folder)

    def read_all(self) -> dict[Path, SidecarRecord]:
        """Every record; lists the whole store, so only for tools and tests, never per file."""
        records = {}
        for record_file in sorted(self.folder.glob("??/*.json")):
            found = self._parse(record_file, record_file.read_bytes())
            if found is not None:
                records[found[0]] = found[1]
        return records

    @contextmanager
    def locked(self) -> Iterator[HashStore]:
        """Hold the store's lock for read-modify-write across processes; `save` inside it."""
        with _reported(f"cannot open {self._lock_path}"):
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(lock)

    def save(self, changes: Mapping[Path, SidecarRecord]) -> None:
        """Replace the records of these paths, each file whole and fsynced; call under `locked`."""
        contents = {
            self.record_file(path): json.dumps(
                {
                    "schema": _STORE_SCHEMA,
                    "path": _encode_path(path),
                    "sha256s": list(record.sha256s),
                    "source": _encode_path(record.source),
                    "written_at": record.written_at,
                },
                sort_keys=True,
            ).encode("ascii")
            for path, record in changes.items()
        }
        if not contents:
            return
        for record_file, data in contents.items():
            temp = _write_temp(record_file, data, mode=0o600)
            with _reported(f"cannot save {record_file}"):
                try:
                    os.replace(temp, record_file)
                except BaseException:
                    _remove_quietly(temp)
                    raise
        for directory in {record_file.parent for record_file in contents}:
            _fsync_directory(directory)
            _sweep_once(directory)

    @staticmethod
    def _parse(record_file: Path, raw: bytes) -> tuple[Path, SidecarRecord] | None:
        try:
            value = json.loads(raw)
            record = SidecarRecord(
                tuple(value["sha256s"]), _decode_path(value["source"]), float(value["written_at"])
            )
            return _decode_path(value["path"]), record
        except (ValueError, KeyError, TypeError) as error:
            log.warning(
                "%s is unreadable (%s); the sidecar it describes is now treated as not svdaemon's",
                record_file,
                error,
            )
            return None


@dataclass(frozen=True)
class Naming:
    """The sidecar path per format, and the other source that already has the short names, if any."""

    paths: Mapping[str, Path]
    clashes_with: Path | None = None


def sidecar_paths(
    source: Path,
    formats: Iterable[str],
    *,
    language: str,
    settings: SidecarSettings,
    records: RecordLookup,
    root: Path | None = None,
    exists: Callable[[Path], bool] = os.path.lexists,
) -> Naming:
    """Where the sidecars of `source` go: `stem[.LANG].ext`, or `name[.LANG].ext` after a clash.

    A short name is taken when the store records it for another source that still exists (or when it
    is the source itself). Then every format uses the long name, so that one source's set stays together.
    """
    source = _absolute(source)
    formats = tuple(formats)
    unknown = sorted(set(formats) - {*FORMATS, ERROR_SIDECAR})
    if unknown:
        raise ValueError(f"unknown sidecar formats: {', '.join(unknown)}")
    directory = sidecar_directory(source, output_dir=settings.output_dir, root=root)
    tag = f".{language}" if settings.language_in_name and language not in _UNTAGGED_LANGUAGES else ""

    def named(base: str) -> dict[str, Path]:
        return {fmt: directory / f"{base}{tag}.{fmt}" for fmt in formats}

    def owners(paths: Mapping[str, Path]) -> list[Path]:
        found = []
        for path in paths.values():
            record = records.get(path)
            if path == source:
                found.append(source)
            elif record is not None and record.source != source and exists(record.source):
                found.append(record.source)
        return found

    short = named(source.stem)
    taken_by = owners(short)
    if not taken_by:
        return Naming(short)
    long = named(source.name)
    if owners(long):
        raise SidecarError(
            f"{source}: sidecar names {short[formats[0]].name} and {long[formats[0]].name} "
            "both belong to other files"
        )
    return Naming(long, taken_by[0])


def sidecar_directory(source: Path, *, output_dir: Path | None, root: Path | None = None) -> Path:
    """Beside the source, or the source's folder mirrored from the watched `root` under `output_dir`.

    Without a root (one-shot files) the sidecars land directly in `output_dir`.
    """
    source = _absolute(source)
    if output_dir is None:
        return source.parent
    base = source.parent if root is None else _absolute(root)
    try:
        relative = source.parent.relative_to(base)
    except ValueError:
        raise SidecarError(f"{source}: not inside the watched folder {base}") from None
    return _absolute(output_dir) / relative


class TargetKind(enum.Enum):
    MISSING = "missing"
    FILE = "file"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True)
class Target:
    """What is at a sidecar path now; `sha256` only for a regular file."""

    path: Path
    kind: TargetKind
    sha256: str | None = None


def probe_target(path: Path) -> Target:
    """Look at a sidecar path without following a symbolic link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return Target(path, TargetKind.MISSING)
    if stat.S_ISLNK(mode):
        return Target(path, TargetKind.SYMLINK)
    if not stat.S_ISREG(mode):
        return Target(path, TargetKind.OTHER)
    return Target(path, TargetKind.FILE, _sha256_of_file(path))


class Action(enum.Enum):
    WRITE = "write"
    REPLACE = "replace"
    KEEP = "keep"  # the overwrite policy leaves the user's file as it is; the other formats are written
    REFUSE = "refuse"  # not a regular file: nothing of the set is written


@dataclass(frozen=True)
class Decision:
    path: Path
    action: Action
    reason: str = ""


@dataclass(frozen=True)
class SidecarResult:
    """What one write of a set did: the paths written (one atomic set), and the sidecars kept as the user's."""

    written: tuple[Path, ...]
    kept: tuple[Decision, ...] = ()

    def kept_note(self) -> str:
        """The kept sidecars in words, e.g. "kept talk.srt (edited since svdaemon wrote it; overwrite:
        ours)"; empty when none was kept."""
        if not self.kept:
            return ""
        return "kept " + ", ".join(f"{decision.path.name} ({decision.reason})" for decision in self.kept)


def plan(targets: Iterable[Target], *, overwrite: Overwrite, records: RecordLookup) -> list[Decision]:
    """What the overwrite policy allows at each path; pure, so the CLI can report it before writing."""
    return [_decide(target, overwrite, records.get(target.path)) for target in targets]


def _decide(target: Target, overwrite: Overwrite, record: SidecarRecord | None) -> Decision:
    def refuse(reason: str) -> Decision:
        return Decision(target.path, Action.REFUSE, reason)

    def keep(reason: str) -> Decision:
        return Decision(target.path, Action.KEEP, reason)

    if target.kind is TargetKind.MISSING:
        return Decision(target.path, Action.WRITE)
    if target.kind is TargetKind.SYMLINK:
        return refuse("is a symbolic link; not written through")
    if target.kind is TargetKind.OTHER:
        return refuse("exists and is not a regular file")
    if overwrite == "never":
        return keep("exists; overwrite: never")
    if overwrite == "ours" and record is None:
        return keep("not written by svdaemon; overwrite: ours")
    if overwrite == "ours" and target.sha256 not in record.sha256s:
        return keep("edited since svdaemon wrote it; overwrite: ours")
    return Decision(target.path, Action.REPLACE)


def write_sidecars(
    source: Path,
    texts: Mapping[str, str],
    *,
    language: str,
    settings: SidecarSettings,
    store: HashStore,
    root: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> SidecarResult:
    """Write the rendered `texts` (format → text) of `source` as one set, or nothing, and record them.

    A sidecar the overwrite policy keeps is left out of the set (and said in the result); when all are
    kept nothing is written. The store stays locked from naming to recording, so the daemon and a one-shot
    command never both decide that the same short name is free. Raises SidecarError when a sidecar path is
    a symbolic link or not a file, or a folder cannot be written, EnvironmentFault when the disk is full.
    """
    source = _absolute(source)
    with store.locked() as records:
        naming = sidecar_paths(
            source, texts, language=language, settings=settings, records=records, root=root
        )
        if naming.clashes_with is not None:
            log.info(
                "%s: its sidecar names are taken by those of %s; writing %s instead",
                source,
                naming.clashes_with,
                ", ".join(path.name for path in naming.paths.values()),
            )
        targets = []
        for path in naming.paths.values():
            with _reported(f"{source}: cannot check {path}"):
                targets.append(probe_target(path))
        decisions = plan(targets, overwrite=settings.overwrite, records=records)
        refused = [decision for decision in decisions if decision.action is Action.REFUSE]
        if refused:
            reasons = "; ".join(f"{decision.path} {decision.reason}" for decision in refused)
            raise SidecarError(f"{source}: no sidecars written: {reasons}")
        kept = tuple(decision for decision in decisions if decision.action is Action.KEEP)
        kept_paths = {decision.path for decision in kept}
        contents = {
            naming.paths[fmt]: text.encode("utf-8")
            for fmt, text in texts.items()
            if naming.paths[fmt] not in kept_paths
        }
        written_at = clock()
        new_records = {
            target.path: SidecarRecord(
                _hashes_after_write(contents[target.path], target, records.get(target.path)),
                source,
                written_at,
            )
            for target in targets
            if target.path in contents
        }
        if contents:
            try:
                _replace_all(contents, before_renames=lambda: records.save(new_records))
            except (SidecarError, EnvironmentFault) as error:
                raise type(error)(f"{source}: {error}") from error
    if contents:
        log.info("%s: wrote %s", source, ", ".join(str(path) for path in contents))
    return SidecarResult(tuple(contents), kept)


def _hashes_after_write(data: bytes, target: Target, record: SidecarRecord | None) -> tuple[str, ...]:
    """The new content's hash, plus the replaced content's when that was ours: a crash may leave either."""
    new = hashlib.sha256(data).hexdigest()
    replaced_ours = record is not None and target.sha256 in record.sha256s and target.sha256 != new
    return (new, target.sha256) if replaced_ours else (new,)


def existing_sidecars_newer_than(
    source: Path,
    formats: Iterable[str],
    *,
    language: str | None,
    settings: SidecarSettings,
    store: HashStore,
    root: Path | None = None,
) -> bool:
    """True when every format's sidecar exists as a regular file at least as new as the source.

    For `skip_existing`, asked before transcribing: with `language_in_name` and `language` None
    (`auto`), any of SenseVoice's language tags counts; an untagged name always counts (no speech).
    """
    source = _absolute(source)
    formats = tuple(formats)
    try:
        source_mtime = os.stat(source).st_mtime_ns
    except OSError:
        return False
    languages = ("", *(SPOKEN_LANGUAGES if language is None else (language,)))
    namings = [
        sidecar_paths(source, formats, language=lang, settings=settings, records=store, root=root)
        for lang in languages
    ]
    return all(any(_is_regular_and_newer(n.paths[fmt], source_mtime) for n in namings) for fmt in formats)


def sweep_temp_files(directory: Path, older_than_s: float = 3600, now: float | None = None) -> int:
    """Remove `.svdaemon-*.tmp` files a crash left in `directory`; returns how many went.

    A temp whose writer (named in it by `owner.file_tag`) has exited goes at once; any other only when older
    than `older_than_s`, so a write in progress elsewhere is left alone. Symbolic links are never followed
    or removed.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            abandoned = tagged_writer_is_dead(entry.name)
            if not abandoned and now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted write", directory, removed)
    return removed


def _replace_all(contents: Mapping[Path, bytes], before_renames: Callable[[], None]) -> None:
    """Write every file of a set to a same-folder temp and fsync it; only then rename them all into place.

    Whatever can fail for an ordinary reason (a folder that cannot be made or written, a full disk, a
    target turned into a symbolic link meanwhile) fails before the first rename and removes the temps,
    so a failure leaves the old set. `before_renames` runs once everything is staged (the hash records).
    """
    mode = 0o666 & ~_umask()
    pending: dict[Path, str] = {}
    try:
        for target, data in contents.items():
            pending[target] = _write_temp(target, data, mode)
        for target in contents:
            if os.path.islink(target):
                raise SidecarError(f"{target} is a symbolic link; not written through")
        before_renames()
        for target in contents:
            with _reported(f"cannot replace {target}"):
                os.replace(pending[target], target)
            del pending[target]
    finally:
        for temp in pending.values():
            _remove_quietly(temp)
    for directory in {target.parent for target in contents}:
        _fsync_directory(directory)
        _sweep_once(directory)


# Folders swept by this process. Temps of a crashed writer exist before we start, and our own are removed
# as we go, so one sweep per folder suffices; sweeping on every write would list a folder of 20,000
# recordings 20,000 times.
_swept: set[Path] = set()


def _sweep_once(directory: Path) -> None:
    if directory not in _swept:
        sweep_temp_files(directory)
        _swept.add(directory)


def _write_temp(target: Path, data: bytes, mode: int) -> str:
    """A fsynced temp file holding `data`, in the target's folder so that the rename is atomic."""
    with _reported(f"cannot create a file in {target.parent}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{file_tag()}-", suffix=TEMP_SUFFIX, dir=target.parent
        )
    with _reported(f"cannot write {target}"):
        try:
            with open(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fchmod(file.fileno(), mode)
                os.fsync(file.fileno())
        except BaseException:
            _remove_quietly(temp)
            raise
    return temp


@contextmanager
def _reported(what: str) -> Iterator[None]:
    """Turn an OSError into svdaemon's error: disk or folder trouble is retried later, the rest is a sidecar error."""
    try:
        yield
    except OSError as error:
        message = f"{what}: {error.strerror or error}"
        if error.errno in _ENVIRONMENT_TROUBLE:
            raise EnvironmentFault(message) from error
        raise SidecarError(message) from error


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable; a folder that cannot be fsynced (some network shares) is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        log.debug("%s: folder not fsynced: %s", directory, error)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as error:
        log.warning("cannot remove temporary file %s: %s", path, error.strerror)


def _umask() -> int:
    """The process umask, from /proc where it can be read without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    """Elsewhere the umask can only be read by setting it: done once, through 0o077 rather than 0.

    During that instant another thread may create a file; it then gets stricter permissions than
    meant, never looser, and only once per process.
    """
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_regular_and_newer(path: Path, mtime_ns: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_mtime_ns >= mtime_ns


def _absolute(path: Path) -> Path:
    """Absolute and normalised, without resolving symbolic links (a linked source keeps its own folder)."""
    return Path(os.path.abspath(path))


def _encode_path(path: Path) -> str:
    return os.fsencode(path).hex()


def _decode_path(text: str) -> Path:
    return Path(os.fsdecode(bytes.fromhex(text)))
