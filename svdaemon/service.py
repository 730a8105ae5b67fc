"""`svdaemon service install | uninstall | status`: start svdaemon at login.

Kinds: a systemd user unit (plus an autostart entry for the tray icon), an XDG autostart entry that runs
the daemon, a launchd agent, a Windows logon task. Each file is rendered from its template in packaging/
by a pure function of plain values, so the golden tests see exactly what a user gets. `install` only
writes files (atomically, 0644) unless `--enable` is given, and records what it wrote (path and SHA-256)
in a small manifest beside the config file; `uninstall` removes exactly those files, never one edited
since, and the folders install made. One kind is installed at a time, so there is never a second daemon.
Stdlib and config only: the command answers within a second and never imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from xml.sax.saxutils import escape as xml_escape

import platformdirs

from svdaemon import control
from svdaemon.config import APP_NAME
from svdaemon.errors import SvdaemonError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR = 0, 2
KINDS = ("systemd", "autostart", "launchd", "windows")
ACTIONS = ("install", "uninstall", "status")
UNIT_NAME = "svdaemon.service"
LAUNCHD_LABEL = "com.svdaemon.daemon"
TASK_NAME = "svdaemon"
FILE_MODE = 0o644
QUERY_TIMEOUT_S = 2.0  # systemctl/launchctl/schtasks answer in milliseconds; a hung bus must not hang us
CHANGE_TIMEOUT_S = 180.0  # `enable --now` waits for READY=1 (TimeoutStartSec=120s in the unit)
SYSTEMD_PROPERTIES = ("ActiveState", "SubState", "UnitFileState", "ExecMainStatus", "Result")

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+")
_SYSTEMD_UNSAFE_PROGRAM = frozenset("\\\"'")
_DESKTOP_RESERVED = frozenset(" \t\"'\\><~|&;$*?#()`")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_FIELD = re.compile(r"\s*([^=:]+?)\s*[=:]\s*(.*)")


class ServiceError(SvdaemonError):
    """The service cannot be installed or removed as asked: the message says what to do instead."""


# ---- values ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Places:
    """Where each kind's files go: from the home folder and XDG_CONFIG_HOME, given as values for tests."""

    home: Path
    config_home: Path  # $XDG_CONFIG_HOME, default ~/.config: systemd user units and autostart entries
    app_dir: Path  # svdaemon's config folder: the manifest and the Windows task file

    @classmethod
    def of_user(cls, environ: Mapping[str, str] = os.environ) -> Places:
        home = Path.home()
        xdg = environ.get("XDG_CONFIG_HOME", "")
        # The XDG spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
        config_home = Path(xdg) if os.path.isabs(xdg) else home / ".config"
        return cls(home, config_home, Path(platformdirs.user_config_dir(APP_NAME)))

    @property
    def unit(self) -> Path:
        return self.config_home / "systemd" / "user" / UNIT_NAME

    @property
    def autostart(self) -> Path:
        return self.config_home / "autostart" / "svdaemon.desktop"

    @property
    def launch_agent(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"

    @property
    def launchd_log(self) -> Path:
        return self.home / "Library" / "Logs" / "svdaemon.log"

    @property
    def logon_task(self) -> Path:
        return self.app_dir / "svdaemon-logon-task.xml"

    @property
    def manifest(self) -> Path:
        return self.app_dir / "service-install.json"


@dataclass(frozen=True)
class Launch:
    """The installed `svdaemon` by absolute path, and the config file to pass when not the default one."""

    executable: Path
    config: Path | None = None

    def command(self, subcommand: str) -> tuple[str, ...]:
        config = () if self.config is None else ("--config", str(self.config))
        return (str(self.executable), subcommand, *config)


@dataclass(frozen=True)
class ServiceFile:
    path: Path
    text: str
    encoding: str = "utf-8"

    @property
    def data(self) -> bytes:
        return self.text.encode(self.encoding)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class DesktopRole:
    name: str
    comment: str


DAEMON_ENTRY = DesktopRole("svdaemon", "Transcribe recordings dropped into watched folders")
TRAY_ENTRY = DesktopRole("svdaemon tray", "Tray icon of the svdaemon user service")


@dataclass(frozen=True)
class Manifest:
    """What install wrote: the kind, each file's SHA-256, the folders it had to make (parents first)."""

    kind: str
    files: Mapping[str, str]
    created_dirs: tuple[str, ...]

    def to_json(self) -> str:
        data = {"kind": self.kind, "files": dict(self.files), "created_dirs": list(self.created_dirs)}
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(str(data["kind"]), dict(data["files"]), tuple(data["created_dirs"]))


@dataclass(frozen=True)
class Controls:
    """One kind's service-manager commands, and whether they can run here (`why_not` says why not)."""

    why_not: str | None
    enable: tuple[tuple[str, ...], ...] = ()
    disable: tuple[tuple[str, ...], ...] = ()
    after_removal: tuple[tuple[str, ...], ...] = ()
    query: tuple[str, ...] | None = None

    @property
    def available(self) -> bool:
        return self.why_not is None


@dataclass(frozen=True)
class ServiceStatus:
    kind: str
    installed: tuple[str, ...]
    enabled: str
    running: str
    last_exit: str

    def lines(self) -> list[str]:
        installed = "yes: " + ", ".join(self.installed) if self.installed else "no"
        return [
            f"kind:      {self.kind}",
            f"installed: {installed}",
            f"enabled:   {self.enabled}",
            f"running:   {self.running}",
            f"last exit: {self.last_exit}",
        ]


# ---- templates and renderers (pure) ------------------------------------------------------------------


def template(name: str) -> str:
    """A wheel carries packaging/ as svdaemon/packaging/; an editable install reads the checkout's."""
    here = Path(__file__).parent
    for folder in (here / "packaging", here.parent / "packaging"):
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8")
    raise ServiceError(f"the template {name} is missing beside {here}; reinstall svdaemon")


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace each @NAME@ in one pass, so a value that holds @...@ stays as it is."""
    missing = sorted(set(_PLACEHOLDER.findall(text)) - values.keys())
    if missing:
        raise ServiceError(f"template placeholder(s) without a value: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def systemd_exec_start(command: Sequence[str]) -> str:
    """ExecStart's value: %% for %, and in arguments $$ for $ and backslash escapes; quoted where needed.

    systemd expands no variables in the program's path and refuses one holding a quote or a backslash.
    """
    program, *arguments = command
    _refuse_control_chars(program)
    if _SYSTEMD_UNSAFE_PROGRAM.intersection(program):
        raise ServiceError(
            f"systemd cannot start a program whose path holds a quote or a backslash: {program}"
        )
    words = [program.replace("%", "%%")]
    for argument in arguments:
        _refuse_control_chars(argument)
        escaped = argument.replace("\\", "\\\\").replace('"', '\\"')
        words.append(escaped.replace("%", "%%").replace("$", "$$"))
    return " ".join(word if _SYSTEMD_PLAIN.fullmatch(word) else f'"{word}"' for word in words)


def desktop_exec_word(word: str) -> str:
    """One Exec argument by the Desktop Entry spec: quoted when reserved characters occur, %% for %."""
    _refuse_control_chars(word)
    if word and not _DESKTOP_RESERVED.intersection(word):
        return word.replace("%", "%%")
    inner = "".join("\\" + char if char in '"`$\\' else char for char in word)
    return '"' + inner.replace("%", "%%") + '"'


def desktop_string(text: str) -> str:
    """The string-type escape, applied after quoting: a backslash becomes two."""
    _refuse_control_chars(text)
    return text.replace("\\", "\\\\")


def render_systemd_unit(command: Sequence[str]) -> str:
    return fill(template("svdaemon.service"), {"EXEC_START": systemd_exec_start(command)})


def render_desktop_entry(command: Sequence[str], role: DesktopRole) -> str:
    exec_line = desktop_string(" ".join(map(desktop_exec_word, command)))
    return fill(
        template("svdaemon.desktop"),
        {"NAME": desktop_string(role.name), "COMMENT": desktop_string(role.comment), "EXEC": exec_line},
    )


def render_launchd_plist(command: Sequence[str], log_path: str) -> str:
    """The template read as a plist: a list item @COMMAND@ becomes the arguments, @LOG@ the log file."""
    plist = plistlib.loads(template(f"{LAUNCHD_LABEL}.plist").encode())
    filled = _fill_plist(plist, {"LOG": log_path}, {"COMMAND": tuple(command)})
    return plistlib.dumps(filled, sort_keys=False).decode()


def render_logon_task(command: Sequence[str], user_id: str) -> str:
    """Task Scheduler XML; Arguments quoted by the MS C runtime rules (`subprocess.list2cmdline`)."""
    for word in command:
        _refuse_control_chars(word)
    values = {"COMMAND": command[0], "ARGUMENTS": subprocess.list2cmdline(command[1:]), "USER_ID": user_id}
    return fill(
        template("svdaemon-logon-task.xml"), {key: xml_escape(value) for key, value in values.items()}
    )


def service_files(kind: str, launch: Launch, places: Places, user_id: str) -> tuple[ServiceFile, ...]:
    """Everything one kind installs. With the systemd unit, the autostart entry runs only the tray."""
    if kind == "systemd":
        return (
            ServiceFile(places.unit, render_systemd_unit(launch.command("run"))),
            ServiceFile(places.autostart, render_desktop_entry(launch.command("tray"), TRAY_ENTRY)),
        )
    if kind == "autostart":
        return (ServiceFile(places.autostart, render_desktop_entry(launch.command("run"), DAEMON_ENTRY)),)
    if kind == "launchd":
        plist = render_launchd_plist(launch.command("run"), str(places.launchd_log))
        return (ServiceFile(places.launch_agent, plist),)
    task = render_logon_task(launch.command("run"), user_id)
    return (ServiceFile(places.logon_task, task, encoding="utf-16"),)  # schtasks reads UTF-16 task files


def _fill_plist(node: object, text: Mapping[str, str], lists: Mapping[str, tuple[str, ...]]) -> object:
    if isinstance(node, dict):
        return {key: _fill_plist(value, text, lists) for key, value in node.items()}
    if isinstance(node, list):
        filled: list[object] = []
        for item in node:
            whole = _PLACEHOLDER.fullmatch(item) if isinstance(item, str) else None
            if whole and whole.group(1) in lists:
                filled.extend(lists[whole.group(1)])
            else:
                filled.append(_fill_plist(item, text, lists))
        return filled
    return fill(node, text) if isinstance(node, str) else node


def _refuse_control_chars(text: str) -> None:
    if _CONTROL_CHARS.search(text):
        raise ServiceError(f"{text!r} holds a control character; a service file cannot carry it")


# ---- the environment: executable, default kind, service managers -------------------------------------


def find_executable(
    python: str = sys.executable, argv0: str = sys.argv[0], which: Callable[[str], str | None] = shutil.which
) -> Path:
    """The `svdaemon` script beside this Python (the venv's), else the one that runs, else the one on PATH.

    Paths stay as found, not resolved: a venv's bin/python is a symlink out of the venv.
    """
    name = "svdaemon.exe" if sys.platform == "win32" else "svdaemon"
    candidates = [Path(python).parent / name]
    if Path(argv0).name in ("svdaemon", "svdaemon.exe"):
        candidates.append(Path(argv0))
    found = which("svdaemon")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Path(os.path.abspath(candidate))
    raise ServiceError(f"cannot find the svdaemon executable (looked for {', '.join(map(str, candidates))})")


def default_kind(platform: str, systemd_reachable: Callable[[], bool]) -> str:
    """macOS: launchd; Windows: a logon task; elsewhere systemd where a user manager answers, else autostart."""
    if platform == "darwin":
        return "launchd"
    if platform in ("win32", "cygwin"):
        return "windows"
    return "systemd" if systemd_reachable() else "autostart"


def systemd_reachable() -> bool:
    return _why_no_user_manager() is None


@functools.cache
def _why_no_user_manager() -> str | None:
    result = _run(("systemctl", "--user", "show", "--property=Version"), QUERY_TIMEOUT_S)
    if result.returncode == 0:
        return None
    detail = result.stderr.strip().splitlines()
    return "no user service manager is reachable" + (f" ({detail[-1]})" if detail else "")


def controls_for(kind: str, places: Places) -> Controls:
    """The commands of each kind's service manager; autostart has none (the session reads the entry)."""
    if kind == "systemd":
        user = ("systemctl", "--user")
        return Controls(
            _why_no_user_manager(),
            enable=((*user, "daemon-reload"), (*user, "enable", "--now", UNIT_NAME)),
            disable=((*user, "disable", "--now", UNIT_NAME),),
            after_removal=((*user, "daemon-reload"),),
            query=(*user, "show", UNIT_NAME, "-p", ",".join(SYSTEMD_PROPERTIES)),
        )
    if kind == "launchd":
        domain = f"gui/{os.getuid()}"
        return Controls(
            None if shutil.which("launchctl") else "launchctl is not available here",
            enable=(("launchctl", "bootstrap", domain, str(places.launch_agent)),),
            disable=(("launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"),),
            query=("launchctl", "print", f"{domain}/{LAUNCHD_LABEL}"),
        )
    if kind == "windows":
        return Controls(
            None if shutil.which("schtasks") else "schtasks is not available here",
            enable=(
                ("schtasks", "/Create", "/XML", str(places.logon_task), "/TN", TASK_NAME, "/F"),
                ("schtasks", "/Run", "/TN", TASK_NAME),
            ),
            disable=(("schtasks", "/End", "/TN", TASK_NAME), ("schtasks", "/Delete", "/TN", TASK_NAME, "/F")),
            query=("schtasks", "/Query", "/TN", TASK_NAME, "/V", "/FO", "LIST"),
        )
    return Controls("an autostart entry needs no service manager")


def windows_user_id(environ: Mapping[str, str] = os.environ) -> str:
    """DOMAIN\\user as Task Scheduler names the logged-in user; the plain user name elsewhere."""
    user = environ.get("USERNAME") or environ.get("USER") or "user"
    domain = environ.get("USERDOMAIN")
    return f"{domain}\\{user}" if domain else user


def _run(argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a manager's command; a missing program or a timeout reads as a failure with a reason."""
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: {exc}")


def shell_line(commands: Sequence[Sequence[str]], kind: str) -> str:
    """Commands as a user types them: cmd.exe quoting for Windows, POSIX shell quoting elsewhere."""
    join = subprocess.list2cmdline if kind == "windows" else shlex.join
    return " && ".join(join(list(command)) for command in commands)


# ---- files: atomic writes, the manifest ----------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> list[Path]:
    """Write through a same-folder temp, fsync, rename; return the folders that had to be made, parents first."""
    created = _missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".svdaemon-", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return created


def read_manifest(path: Path) -> Manifest | None:
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServiceError(f"cannot read {path} ({exc}); remove it and the service files by hand") from exc


def file_digest(path: Path) -> str | None:
    """SHA-256 of a regular file; None when nothing is there. A symbolic link is never ours."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        return "not a regular file"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _missing_parents(path: Path) -> list[Path]:
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where folders can be fsynced (POSIX); elsewhere the rename is what we have."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- actions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str
    places: Places
    controls: Controls
    out: TextIO


def install(request: Request, launch: Launch, enable: bool) -> int:
    """Write the kind's files (replacing another installed kind), record them, then enable or say how."""
    places, out = request.places, request.out
    files = service_files(request.kind, launch, places, windows_user_id())
    previous = read_manifest(places.manifest)
    _refuse_foreign_files(files, previous)
    if previous is not None and previous.kind != request.kind:
        out.write(f"replacing the {previous.kind} service with {request.kind}\n")
        _remove(previous, Request(previous.kind, places, controls_for(previous.kind, places), out))
        previous = None
    created = [Path(folder) for folder in previous.created_dirs] if previous else []
    for file in files:
        if file_digest(file.path) == file.digest:
            out.write(f"unchanged {file.path}\n")
            continue
        created += write_atomically(file.path, file.data)
        out.write(f"wrote {file.path}\n")
    created += _missing_parents(places.manifest)
    files_written = {str(file.path): file.digest for file in files}
    manifest = Manifest(request.kind, files_written, tuple(dict.fromkeys(map(str, created))))
    write_atomically(places.manifest, manifest.to_json().encode())
    return _enable(request) if enable else _say_how_to_enable(request)


def uninstall(request: Request) -> int:
    manifest = read_manifest(request.places.manifest)
    if manifest is None:
        request.out.write("nothing to remove: no login service was installed by `svdaemon service install`\n")
        return EXIT_OK
    if manifest.kind != request.kind:
        raise ServiceError(
            f"the installed login service is {manifest.kind}, not {request.kind}; "
            "run `svdaemon service uninstall` without --kind"
        )
    _remove(manifest, request)
    return EXIT_OK


def status(request: Request, state_dir: Path) -> int:
    manifest = read_manifest(request.places.manifest)
    installed = manifest is not None and manifest.kind == request.kind
    files = tuple(path for path in manifest.files if os.path.lexists(path)) if installed else ()
    report = _query_status(request, files, state_dir)
    request.out.write("\n".join(report.lines()) + "\n")
    return EXIT_OK


def _refuse_foreign_files(files: Sequence[ServiceFile], previous: Manifest | None) -> None:
    """Never replace a file install did not write, or one edited since: the user's changes stay theirs."""
    recorded = previous.files if previous else {}
    foreign = []
    for file in files:
        current = file_digest(file.path)
        if current not in (None, file.digest, recorded.get(str(file.path))):
            foreign.append(str(file.path))
    if foreign:
        raise ServiceError(
            f"{', '.join(foreign)}: not as `svdaemon service install` wrote it (edited, or someone else's); "
            "move it away and install again (local changes to the unit belong in `systemctl --user edit svdaemon`)"
        )


def _remove(manifest: Manifest, request: Request) -> None:
    """Disable, delete the recorded files that are unchanged, the manifest, then the folders install made."""
    out, controls = request.out, request.controls
    if controls.available:
        for command in controls.disable:
            _tolerate(command, out)  # "not enabled" or "not running" is the state we want anyway
    elif controls.disable:
        out.write(
            f"{controls.why_not}; if the service is enabled, also run: {shell_line(controls.disable, request.kind)}\n"
        )
    for path_text, digest in manifest.files.items():
        path = Path(path_text)
        current = file_digest(path)
        if current == digest:
            path.unlink()
            out.write(f"removed {path}\n")
        elif current is not None:
            out.write(f"kept {path}: changed since install\n")
    request.places.manifest.unlink(missing_ok=True)
    for folder in reversed(manifest.created_dirs):
        _remove_empty_folder(Path(folder))
    if controls.available:
        for command in controls.after_removal:
            _tolerate(command, out)


def _remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:  # not empty (something else lives there now) or already gone
        log.debug("kept folder %s: %s", folder, exc.strerror)


def _tolerate(command: Sequence[str], out: TextIO) -> None:
    result = _run(command, CHANGE_TIMEOUT_S)
    if result.returncode != 0:
        out.write(f"note: {shlex.join(command)}: {result.stderr.strip() or f'exit {result.returncode}'}\n")


def _enable(request: Request) -> int:
    controls, out = request.controls, request.out
    if not controls.available:
        return _say_how_to_enable(request)
    for command in controls.enable:
        result = _run(command, CHANGE_TIMEOUT_S)
        if result.returncode != 0:
            raise ServiceError(f"{shlex.join(command)} failed: {result.stderr.strip() or result.returncode}")
    out.write(f"enabled and started the {request.kind} service\n")
    return EXIT_OK


def _say_how_to_enable(request: Request) -> int:
    controls, out = request.controls, request.out
    if not controls.enable:
        out.write("svdaemon starts at your next login (the autostart entry needs no enabling)\n")
    elif controls.available:
        out.write(f"to start it now and at every login: {shell_line(controls.enable, request.kind)}\n")
    else:
        out.write(f"{controls.why_not}; to start it now and at every login, run in your desktop session:\n")
        out.write(f"  {shell_line(controls.enable, request.kind)}\n")
    return EXIT_OK


def _query_status(request: Request, files: tuple[str, ...], state_dir: Path) -> ServiceStatus:
    controls = request.controls
    fields: dict[str, str] = {}
    if controls.available and controls.query:
        result = _run(controls.query, QUERY_TIMEOUT_S)
        fields = parse_fields(result.stdout) if result.returncode == 0 else {}
    running = _daemon_answers(state_dir)
    if request.kind == "systemd" and fields:
        return ServiceStatus(
            request.kind,
            files,
            fields.get("UnitFileState") or "no",
            f"{fields.get('ActiveState', '?')} ({fields.get('SubState', '?')})",
            f"{fields.get('ExecMainStatus', '?')} ({fields.get('Result', '?')})",
        )
    if request.kind in ("launchd", "windows") and fields:
        state = fields.get("state") or fields.get("Status") or "?"
        last = fields.get("last exit code") or fields.get("Last Result") or "unknown"
        return ServiceStatus(request.kind, files, "yes (loaded)", f"{running} ({state})", last)
    if request.kind == "autostart":
        enabled = "at login (autostart entry)" if files else "no"
        return ServiceStatus(request.kind, files, enabled, running, "not recorded for autostart")
    unknown = f"unknown ({controls.why_not})" if controls.why_not else "no"
    return ServiceStatus(request.kind, files, unknown, running, "unknown")


def parse_fields(text: str) -> dict[str, str]:
    """`Key=value` (systemctl show), `key = value` (launchctl print), `Key:  value` (schtasks /FO LIST)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _FIELD.fullmatch(line)
        if match:
            fields.setdefault(match.group(1), match.group(2).strip())
    return fields


def _daemon_answers(state_dir: Path) -> str:
    try:
        control.request(state_dir, control.Command("status"))
    except control.DaemonNotRunning:
        return "no"
    except control.ControlError as exc:
        return f"unknown ({exc})"
    return "yes (the daemon answers)"


# ---- entry ---------------------------------------------------------------------------------------------


def main(
    action: str,
    *,
    kind: str | None = None,
    enable: bool = False,
    config_path: Path | None = None,
    state_dir: Path,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """`svdaemon service ACTION`; returns the exit code.

    0: done, also when no service manager is reachable (the command to run is printed instead).
    2: the user must act: unknown kind or action, no svdaemon executable, a file edited since install (or
    not install's), a manager command that failed. Without `kind`: the installed kind, else the platform's.
    `config_path` goes into the service's command line; `state_dir` is where status asks the daemon.
    """
    try:
        if action not in ACTIONS:
            raise ServiceError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        if kind is not None and kind not in KINDS:
            raise ServiceError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        places = Places.of_user()
        installed = read_manifest(places.manifest)
        chosen = kind or (installed.kind if installed else default_kind(sys.platform, systemd_reachable))
        request = Request(chosen, places, controls_for(chosen, places), out)
        if action == "install":
            config = None if config_path is None else Path(os.path.abspath(config_path.expanduser()))
            return install(request, Launch(find_executable(), config), enable)
        if action == "uninstall":
            return uninstall(request)
        return status(request, state_dir)
    except (ServiceError, OSError) as exc:
        err.write(f"svdaemon service: {exc}\n")
        return EXIT_ERROR
