"""A file in the data dir that one process takes at a time: what a stopping process left for the next one (an
outage's unwritten work, kept.py; the requests an embedded queue left undecided, bus/local.py).

A process takes such a file under an exclusive lock (flock), which it holds until it removes the file, once what the
file says is done, or lets go of it (what it says is left for the next start). The lock holds between processes
whatever pid namespace each runs in, and a process that dies lets go of it. A process that opened the file before
another removed it wins the lock on a file no longer at its path, and takes nothing.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Taken:
    """A file this process holds: its path, its bytes as taken, and the locked descriptor (-1 once let go). As a
    context manager, let go of on leaving unless removed."""

    path: Path
    raw: bytes
    fd: int

    def remove(self) -> None:
        """What the file said is done: it goes (removed, then unlocked)."""
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Let go of the file, left where it is for the next process."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Taken:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def take(path: Path) -> Taken | None:
    """The file at `path`, taken under an exclusive lock; None when there is none, another process holds it, or it
    was removed while this one waited on it. OSError when it is there but cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return Taken(path, b"".join(chunks), fd)
