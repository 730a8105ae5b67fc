"""`svdaemon service`: golden renders, the real validators (systemd-analyze, desktop-file-validate, plistlib,
GLib's own launcher), and install / uninstall / status on a real temporary home folder.

Nothing is mocked. This machine has no systemd user manager (CI runs as root in a container), so `--enable`
takes its "print the command" path, and launchd and Task Scheduler files are rendered and parsed, never
registered.
"""

from __future__ import annotations

import io
import os
import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from svdaemon import service
from svdaemon.control import ControlServer
from svdaemon.service import (
    DAEMON_ENTRY,
    LAUNCHD_LABEL,
    TRAY_ENTRY,
    Places,
    ServiceError,
    default_kind,
    find_executable,
    parse_fields,
    render_desktop_entry,
    render_launchd_plist,
    render_logon_task,
    render_systemd_unit,
)

from doubles import DaemonDouble, wait_for

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).parent / "golden" / "service"
REPO = Path(__file__).parent.parent
LINUX_RUN = (
    "/opt/svdaemon/.venv/bin/svdaemon",
    "run",
    "--config",
    "/home/ana/.config/svdaemon/work config.yaml",
)
MAC_RUN = (
    "/Users/ana/.venvs/svdaemon/bin/svdaemon",
    "run",
    "--config",
    "/Users/ana/Library/Application Support/svdaemon/config.yaml",
)
WINDOWS_RUN = (
    "C:\\Users\\ana\\svdaemon\\.venv\\Scripts\\svdaemon.exe",
    "run",
    "--config",
    "C:\\Users\\ana\\AppData\\Local\\svdaemon\\svdaemon\\config & notes.yaml",
)
SANDBOXING_THAT_BREAKS_CUDA = ("PrivateDevices", "ProtectKernel", "MemoryDenyWriteExecute", "DevicePolicy")
TREE_SNAPSHOT = dict[str, tuple[int, bytes | None]]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Places:
    """A user's home with an unrelated config folder already there, which install must leave as it is."""
    home = tmp_path / "home"
    (home / ".config" / "other-app").mkdir(parents=True)
    (home / ".config" / "other-app" / "settings.ini").write_text("x=1\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return Places.of_user()


def run_service(action: str, state_dir: Path, **options: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = service.main(action, state_dir=state_dir, out=out, err=err, **options)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> TREE_SNAPSHOT:
    """Every path under `root` with its mode and (for files) its bytes."""
    return {
        str(path.relative_to(root)): (path.lstat().st_mode, None if path.is_dir() else path.read_bytes())
        for path in sorted(root.rglob("*"))
    }


def needs_systemd_without_user_manager() -> None:
    if service.systemd_reachable():
        pytest.skip("a systemd user manager answers here; these tests are about the machine without one")


def systemd_verify(unit: Path, runtime_dir: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze --user verify`, which works as root without a user manager once XDG_RUNTIME_DIR is set."""
    env = dict(os.environ, XDG_RUNTIME_DIR=runtime_dir)
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- renderers --------------------------------------------------------------------------------------


RENDERS: dict[str, Callable[[], str]] = {
    "svdaemon.service": lambda: render_systemd_unit(LINUX_RUN),
    "autostart-daemon.desktop": lambda: render_desktop_entry(LINUX_RUN, DAEMON_ENTRY),
    "autostart-tray.desktop": lambda: render_desktop_entry((LINUX_RUN[0], "tray"), TRAY_ENTRY),
    "com.svdaemon.daemon.plist": lambda: render_launchd_plist(
        MAC_RUN, "/Users/ana/Library/Logs/svdaemon.log"
    ),
    "svdaemon-logon-task.xml": lambda: render_logon_task(WINDOWS_RUN, "DESKTOP-7\\ana"),
}


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_rendered_file_matches_its_golden_copy(name: str) -> None:
    assert RENDERS[name]() == (GOLDEN / name).read_text(encoding="utf-8")


def test_unit_is_a_notify_service_with_restart_limits_and_no_sandboxing_that_breaks_cuda() -> None:
    lines = render_systemd_unit(LINUX_RUN).splitlines()
    unit_section = lines[: lines.index("[Service]")]
    for setting in ("StartLimitIntervalSec=600", "StartLimitBurst=5"):
        assert setting in unit_section
    for setting in ("Type=notify", "NotifyAccess=main", "WatchdogSec=60s", "Restart=on-failure"):
        assert setting in lines
    assert "RestartPreventExitStatus=75" in lines
    assert lines[-1] == "WantedBy=default.target"
    assert not [line for line in lines if line.startswith(SANDBOXING_THAT_BREAKS_CUDA)]


def test_unusual_program_path_is_quoted_so_systemd_finds_the_program(tmp_path: Path) -> None:
    folder = tmp_path / "My Apps" / "100% $venv;x"
    folder.mkdir(parents=True)
    program = folder / "svdaemon"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "svdaemon.service"
    unit.write_text(render_systemd_unit((str(program), "run", "--config", str(tmp_path / "a b%$.yaml"))))
    (tmp_path / "run").mkdir()
    verified = systemd_verify(unit, str(tmp_path / "run"))
    assert (verified.returncode, verified.stderr) == (0, "")
    with pytest.raises(ServiceError, match="quote or a backslash"):
        render_systemd_unit((str(tmp_path / "it's" / "svdaemon"), "run"))


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed")
def test_unusual_paths_reach_the_program_exactly_as_glib_launches_the_entry(tmp_path: Path) -> None:
    """GLib's DesktopAppInfo is what GNOME's session uses to start autostart entries."""
    gi = pytest.importorskip("gi")
    gi.require_version("Gio", "2.0")
    from gi.repository import Gio

    folder = tmp_path / "My Apps" / "$venv" / 'back\\slash "q" `x`'
    folder.mkdir(parents=True)
    program, argv_file = folder / "svdaemon", tmp_path / "argv"
    program.write_text(f'#!/bin/sh\nfor a in "$0" "$@"; do printf "%s\\n" "$a"; done > "{argv_file}"\n')
    program.chmod(0o755)
    command = (str(program), "run", "--config", str(tmp_path / "a'b;c 50%.yaml"))
    entry = tmp_path / "svdaemon.desktop"
    entry.write_text(render_desktop_entry(command, DAEMON_ENTRY))
    assert subprocess.run(["desktop-file-validate", str(entry)], capture_output=True).returncode == 0
    assert Gio.DesktopAppInfo.new_from_filename(str(entry)).launch([], None)
    assert wait_for(lambda: argv_file.exists() and argv_file.read_text().endswith(".yaml\n"))
    assert argv_file.read_text().splitlines() == list(command)


# ---- install, uninstall, status on a real home folder -----------------------------------------------


def test_installed_unit_passes_systemd_analyze_verify(home: Places, tmp_path: Path) -> None:
    config = tmp_path / "my config.yaml"
    config.write_text("settle_s: 1\n")
    code, out, err = run_service("install", tmp_path / "state", kind="systemd", config_path=config)
    assert (code, err) == (0, "")
    assert f"wrote {home.unit}" in out
    exec_start = next(line for line in home.unit.read_text().splitlines() if line.startswith("ExecStart="))
    assert exec_start == f'ExecStart={find_executable()} run --config "{config}"'
    verified = systemd_verify(home.unit, os.environ["XDG_RUNTIME_DIR"])
    assert (verified.returncode, verified.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed")
def test_autostart_entry_runs_the_tray_beside_the_unit_and_the_daemon_alone(
    home: Places, tmp_path: Path
) -> None:
    executable = find_executable()
    for kind, expected_exec in (
        ("systemd", f"Exec={executable} tray"),
        ("autostart", f"Exec={executable} run"),
    ):
        assert run_service("install", tmp_path / "state", kind=kind)[0] == 0
        validated = subprocess.run(
            ["desktop-file-validate", str(home.autostart)], capture_output=True, text=True
        )
        assert (validated.returncode, validated.stdout, validated.stderr) == (0, "", "")
        assert expected_exec in home.autostart.read_text().splitlines()
    assert not home.unit.exists(), "the autostart kind runs the daemon itself: the unit must be gone"


def test_launchd_plist_round_trips_through_plistlib(home: Places, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    code, out, _ = run_service("install", tmp_path / "state", kind="launchd", config_path=config)
    assert code == 0
    plist = plistlib.loads(home.launch_agent.read_bytes())
    assert plist["Label"] == LAUNCHD_LABEL
    assert plist["ProgramArguments"] == [str(find_executable()), "run", "--config", str(config)]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(home.launchd_log)
    assert plistlib.dumps(plist, sort_keys=False) == home.launch_agent.read_bytes()
    assert "launchctl bootstrap gui/" in out


def test_windows_logon_task_is_utf16_task_xml(home: Places, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    code, out, _ = run_service("install", tmp_path / "state", kind="windows", enable=True, config_path=config)
    assert code == 0
    data = home.logon_task.read_bytes()
    assert data.startswith(b"\xff\xfe")  # UTF-16 LE with its byte-order mark, as schtasks exports tasks
    task = ET.fromstring(data.decode("utf-16").split("?>", 1)[1])
    namespace = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    assert task.findtext("t:Actions/t:Exec/t:Command", namespaces=namespace) == str(find_executable())
    arguments = subprocess.list2cmdline(["run", "--config", str(config)])
    assert task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=namespace) == arguments
    assert f"schtasks /Create /XML {home.logon_task} /TN svdaemon /F" in out


@pytest.mark.parametrize("kind", service.KINDS)
def test_install_then_uninstall_leaves_the_tree_as_before(home: Places, tmp_path: Path, kind: str) -> None:
    before = tree(home.home)
    assert run_service("install", tmp_path / "state", kind=kind)[0] == 0
    installed = set(tree(home.home)) - set(before)
    assert str(home.manifest.relative_to(home.home)) in installed
    code, out, _ = run_service("uninstall", tmp_path / "state")
    assert code == 0
    assert "removed" in out
    assert tree(home.home) == before


@pytest.mark.parametrize("kind", ["systemd", "autostart"])
def test_install_twice_is_idempotent(home: Places, tmp_path: Path, kind: str) -> None:
    assert run_service("install", tmp_path / "state", kind=kind)[0] == 0
    first = tree(home.home)
    code, out, _ = run_service("install", tmp_path / "state", kind=kind)
    assert code == 0
    assert "wrote" not in out
    assert "unchanged" in out
    assert tree(home.home) == first


def test_files_are_written_0644(home: Places, tmp_path: Path) -> None:
    os.umask(0o077)  # install sets the mode itself, whatever the umask
    try:
        assert run_service("install", tmp_path / "state", kind="systemd")[0] == 0
    finally:
        os.umask(0o022)
    for path in (home.unit, home.autostart, home.manifest):
        assert path.stat().st_mode & 0o777 == 0o644


def test_status_with_nothing_installed(home: Places, tmp_path: Path) -> None:
    code, out, err = run_service("status", tmp_path / "state")
    assert (code, err) == (0, "")
    assert "installed: no" in out.splitlines()
    assert "running:   no" in out.splitlines()


def test_status_says_installed_and_whether_the_daemon_answers(home: Places, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert run_service("install", state_dir, kind="autostart")[0] == 0
    daemon = DaemonDouble()  # the daemon's end of the control socket; a real socket and server thread
    with ControlServer(state_dir, daemon.snapshot, daemon.handle):
        _, out, _ = run_service("status", state_dir)
    lines = out.splitlines()
    assert f"installed: yes: {home.autostart}" in lines
    assert "enabled:   at login (autostart entry)" in lines
    assert "running:   yes (the daemon answers)" in lines
    assert "running:   no" in run_service("status", state_dir)[1].splitlines()


def test_enable_without_a_user_manager_exits_0_and_prints_the_command(home: Places, tmp_path: Path) -> None:
    needs_systemd_without_user_manager()
    code, out, err = run_service("install", tmp_path / "state", kind="systemd", enable=True)
    assert (code, err) == (0, "")
    assert "no user service manager is reachable" in out
    assert "systemctl --user daemon-reload && systemctl --user enable --now svdaemon.service" in out
    _, status_out, _ = run_service("status", tmp_path / "state")
    assert "enabled:   unknown (no user service manager is reachable" in status_out


def test_edited_file_is_neither_replaced_nor_removed(home: Places, tmp_path: Path) -> None:
    assert run_service("install", tmp_path / "state", kind="systemd")[0] == 0
    edited = home.unit.read_text() + "Environment=CUDA_VISIBLE_DEVICES=1\n"
    home.unit.write_text(edited)
    code, _, err = run_service("install", tmp_path / "state", kind="systemd")
    assert code == 2
    assert str(home.unit) in err
    assert home.unit.read_text() == edited
    code, out, _ = run_service("uninstall", tmp_path / "state")
    assert code == 0
    assert f"kept {home.unit}: changed since install" in out
    assert home.unit.read_text() == edited
    assert not home.autostart.exists()
    assert not home.manifest.exists()


def test_a_file_install_did_not_write_blocks_install(home: Places, tmp_path: Path) -> None:
    home.autostart.parent.mkdir(parents=True)
    home.autostart.write_text("[Desktop Entry]\nType=Application\nName=mine\nExec=/usr/bin/true\n")
    before = tree(home.home)
    code, _, err = run_service("install", tmp_path / "state", kind="autostart")
    assert code == 2
    assert str(home.autostart) in err
    assert tree(home.home) == before


def test_uninstall_refuses_a_kind_that_is_not_the_installed_one(home: Places, tmp_path: Path) -> None:
    assert run_service("install", tmp_path / "state", kind="autostart")[0] == 0
    code, _, err = run_service("uninstall", tmp_path / "state", kind="systemd")
    assert code == 2
    assert "the installed login service is autostart" in err
    assert home.autostart.exists()


def test_uninstall_with_nothing_installed(home: Places, tmp_path: Path) -> None:
    before = tree(home.home)
    code, out, _ = run_service("uninstall", tmp_path / "state")
    assert code == 0
    assert "nothing to remove" in out
    assert tree(home.home) == before


def test_unknown_kind_is_a_usage_error(home: Places, tmp_path: Path) -> None:
    code, _, err = run_service("install", tmp_path / "state", kind="upstart")
    assert code == 2
    assert "unknown kind 'upstart'" in err


# ---- pieces ------------------------------------------------------------------------------------------


def test_default_kind_by_platform() -> None:
    assert default_kind("darwin", lambda: True) == "launchd"
    assert default_kind("win32", lambda: True) == "windows"
    assert default_kind("linux", lambda: True) == "systemd"
    assert default_kind("linux", lambda: False) == "autostart"


def test_executable_is_the_script_beside_the_venv_python_unresolved(tmp_path: Path) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)  # as in a venv: resolving it would leave the venv
    script = bin_dir / "svdaemon"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert find_executable(str(bin_dir / "python"), "-c", lambda name: None) == script
    script.unlink()
    with pytest.raises(ServiceError, match="cannot find the svdaemon executable"):
        find_executable(str(bin_dir / "python"), "-c", lambda name: None)


def test_manager_outputs_are_read_as_fields() -> None:
    systemctl = (
        "ActiveState=active\nSubState=running\nUnitFileState=enabled\nExecMainStatus=0\nResult=success\n"
    )
    assert parse_fields(systemctl)["UnitFileState"] == "enabled"
    launchctl = "gui/501/com.svdaemon.daemon = {\n\tstate = running\n\tlast exit code = 1\n}\n"
    assert parse_fields(launchctl)["last exit code"] == "1"
    schtasks = "TaskName:                             \\svdaemon\nStatus:                               Ready\nLast Result:                          0\n"
    assert parse_fields(schtasks)["Last Result"] == "0"


def test_service_status_answers_within_a_second_without_torch(home: Places, tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from svdaemon import service; start = time.monotonic(); "
        f"code = service.main('status', state_dir=Path({str(tmp_path / 'state')!r})); "
        "print(time.monotonic() - start, code, 'torch' in sys.modules or 'funasr' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seconds, code, heavy = done.stdout.splitlines()[-1].split()
    assert (code, heavy) == ("0", "False")
    assert float(seconds) < 1.0


def test_every_template_ships_in_the_wheel() -> None:
    """pyproject maps packaging/ to the package svdaemon.packaging and lists the templates as its data."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools.get("package-dir", {}).get("svdaemon.packaging") == "packaging"
    patterns = setuptools.get("package-data", {}).get("svdaemon.packaging", [])
    templates = {"svdaemon.service", "svdaemon.desktop", f"{LAUNCHD_LABEL}.plist", "svdaemon-logon-task.xml"}
    for name in templates:
        assert (REPO / "packaging" / name).is_file()
        assert any(Path(name).match(pattern) for pattern in patterns), f"{name} is not package data"
