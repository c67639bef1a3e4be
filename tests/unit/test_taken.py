"""A file one process takes at a time (playgate.taken): held under a lock, let go of or removed; a taker that
opened the file before another removed it takes nothing."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from playgate import taken
from playgate.taken import take


def test_a_file_is_taken_by_one_holder_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "kept"
    assert take(path) is None  # none there
    path.write_bytes(b"work")
    held = take(path)
    assert held is not None
    assert held.raw == b"work"
    assert take(path) is None  # held
    held.release()
    held.release()  # letting go twice is letting go once
    again = take(path)
    assert again is not None
    with again:
        again.remove()
    assert not path.exists()
    assert again.fd == -1


def test_a_taker_that_opened_a_file_since_removed_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened just before another process removed it (and wrote another file at its path): the lock is won on a file
    no longer there, so nothing is taken twice; the next take finds the new file."""
    path = tmp_path / "kept"
    path.write_bytes(b"first")
    lock = fcntl.flock

    def removed_first(fd: int, operation: int) -> None:
        path.unlink()  # the other process, between this one's open and its lock
        path.write_bytes(b"second")
        lock(fd, operation)

    monkeypatch.setattr(taken.fcntl, "flock", removed_first)
    assert take(path) is None
    monkeypatch.undo()
    held = take(path)
    assert held is not None
    assert held.raw == b"second"
    held.release()


def test_a_file_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    """A directory where the file should be: OSError, for the caller to name, rather than nothing taken."""
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError):  # noqa: PT011  # which errno is the platform's
        take(tmp_path / "kept")
