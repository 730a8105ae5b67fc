"""Command lines for svdaemon's own child processes: they import the package their parent runs.

`python -m svdaemon.cli tray` and `python -c ...` put the current folder first on `sys.path`. Started from
a folder that holds a `svdaemon` folder (a clone in the home folder, which is where autostart and systemd
start programs), the child would import that folder instead of the installed package, and crash. So every
child (the tray, the decode processes, the bench rows) starts with its parent's import path, made absolute,
in place before it imports anything of ours.
"""

from __future__ import annotations

import os
import sys


def _parent_path() -> list[str]:
    """The parent's `sys.path` with relative entries ("" is the current folder) made absolute."""
    return [os.path.abspath(entry) for entry in sys.path]


def python_code_command(code: str) -> list[str]:
    """`python -c code`, the code running on the parent's import path."""
    return [sys.executable, "-c", f"import sys; sys.path[:] = {_parent_path()!r}; {code}"]


def python_module_command(module: str, *args: str) -> list[str]:
    """`python -m module args...`, the module found on the parent's import path."""
    run = f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [*python_code_command(run), *args]
