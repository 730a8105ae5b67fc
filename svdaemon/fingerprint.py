"""What tells one content of a file from the next without reading it: size, modification time, inode.

The watcher waits for it to settle, the queue dedupes on it, and the pipeline checks it again before
writing sidecars, so content that changed is never transcribed as the old one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of_stat(cls, st: os.stat_result) -> Fingerprint:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)

    @classmethod
    def of(cls, path: Path | str) -> Fingerprint:
        return cls.of_stat(os.stat(path))
