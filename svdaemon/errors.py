"""One exception type per kind of failure that callers treat differently.

The worker's retry policy and the CLI's exit codes read the type, never the message.
"""

from __future__ import annotations


class SvdaemonError(Exception):
    """Base of svdaemon's own errors: the message is one line a user understands."""


class ConfigError(SvdaemonError):
    """A setting is wrong: the message names the key and the bad value."""


class StartupError(SvdaemonError):
    """The daemon or a command cannot start: no model, incomplete weights, no CUDA where asked for."""


class DecodeError(SvdaemonError):
    """A source file cannot be decoded to audio; retrying does not help until the file changes."""


class SidecarError(SvdaemonError):
    """A sidecar cannot be written (symlink, clash with a foreign file, unwritable folder)."""


class EnvironmentFault(SvdaemonError):
    """GPU, memory or disk trouble: retried, never counted against the file."""


class SourceChanged(SvdaemonError):
    """The source changed while it was being transcribed: its sidecars would describe the old content."""


class QueueError(SvdaemonError):
    """The queue's database cannot be read now (locked, damaged, gone): the reader says so and goes on."""


class DeviceLost(EnvironmentFault):
    """The GPU failed or disappeared mid-job: the job goes back to the queue and the worker changes device."""
