"""What an outage left unwritten when its process stopped with the ledger's store still down, kept in the data dir
for the next process started on it (PlayGate.write_back_before_stopping, PlayGate.outage_taken_back).

One file per stopping process (`outage-unwritten-<pid>-<random>.json`, written whole or not at all). A starting
process takes each (taken.py: under an exclusive lock) and holds it until the work is written back or kept again, so
that one process only takes a file, and one that dies lets go of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from playgate.connections import decision_from_json, decision_to_json
from playgate.domain import EndedStream, Reason, Stream
from playgate.outage import DeferredStop, Reconciliation
from playgate.taken import Taken, take

log = logging.getLogger("playgate.outage")

PREFIX = "outage-unwritten-"
SUFFIX = ".json"


def _stream_from(d: dict[str, Any]) -> Stream:
    """A stream of a keep file, each field of its type (ValueError, TypeError or KeyError otherwise)."""
    kinds = d.get("kinds", [])
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise TypeError(f"kinds must be a list of strings: {kinds!r}")
    texts = [d[name] for name in ("id", "user_id", "video_id", "device_id", "device_name")]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"a stream's ids and names must be strings: {texts!r}")
    return Stream(
        id=d["id"],
        user_id=d["user_id"],
        video_id=d["video_id"],
        device_id=d["device_id"],
        started_at=float(d["started_at"]),
        expires_at=float(d["expires_at"]),
        device_name=d["device_name"],
        kinds=tuple(kinds),
        away=bool(d["away"]),
    )


def reconciliation_to_json(work: Reconciliation, since: float) -> bytes:
    """What an outage left, and when it began (`since`), as the keep file holds it."""
    stopped = work.stopped.items()
    return orjson.dumps(
        {
            "since": since,
            "streams": [asdict(s) for s in work.streams],
            "decisions": [decision_to_json(d) for d in work.decisions],
            "stopped": {sid: {"user": d.user_id, "reason": d.reason.value, "at": d.at} for sid, d in stopped},
            "unannounced": [{"stream": asdict(e.stream), "reason": e.reason.value} for e in work.unannounced],
        }
    )


def reconciliation_from_json(raw: bytes, now: float) -> tuple[Reconciliation, float]:
    """A keep file's work (its down time counted to `now`) and the instant its outage began; ValueError (or
    KeyError, TypeError) for a file that is not one."""
    body = orjson.loads(raw)
    since = float(body["since"])
    work = Reconciliation(
        streams=[_stream_from(s) for s in body["streams"]],
        decisions=[decision_from_json(d) for d in body["decisions"]],
        stopped={
            str(sid): DeferredStop(str(d["user"]), Reason(d["reason"]), float(d["at"]))
            for sid, d in body["stopped"].items()
        },
        unannounced=[EndedStream(_stream_from(e["stream"]), Reason(e["reason"])) for e in body["unannounced"]],
        down_s=max(0.0, now - since),
    )
    return work, since


class KeptOutages:
    """The keep files of one data dir: kept by a stopping process, taken (and held) by a starting one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: list[Taken] = []

    @property
    def held(self) -> bool:
        """Whether files taken by this process still wait for their work to be written back."""
        return bool(self._held)

    def keep(self, work: Reconciliation, since: float) -> Path:
        """Write `work` (of an outage under way since `since`) to a new keep file; OSError if it cannot be."""
        path = self.folder / f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        part = path.with_name(path.name + ".part")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            part.write_bytes(reconciliation_to_json(work, since))
            part.replace(path)  # a reader never sees half a file
        except OSError:
            part.unlink(missing_ok=True)
            raise
        return path

    def take(self, now: float) -> list[tuple[Path, Reconciliation, float]]:
        """The work of every keep file no other process holds (each file's path, work and outage start), now held
        by this process; one that does not parse is renamed `.unreadable` and named in an error line."""
        taken = []
        for path in self._candidates():
            try:
                held = take(path)
            except OSError as exc:
                log.error("cannot read %s, an outage's kept work (%s): left there", path, exc)
                continue
            if held is None:
                continue  # another process holds it, or took it and wrote it back
            try:
                work, since = reconciliation_from_json(held.raw, now)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                unreadable = path.with_name(path.name + ".unreadable")
                log.error("%s is not an outage's kept work (%s): left as %s", path, exc, unreadable)
                with contextlib.suppress(OSError):
                    path.rename(unreadable)
                held.release()
                continue
            self._held.append(held)
            taken.append((path, work, since))
        return taken

    def release(self) -> None:
        """The held files' work is written back, or kept again: the files go (removed, then unlocked)."""
        for held in self._held:
            held.remove()
        self._held.clear()

    def remove_all(self) -> int:
        """Delete every keep file (playgate db reset, the service stopped); how many there were."""
        removed = 0
        for path in self.folder.glob(f"{PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    def _candidates(self) -> list[Path]:
        """The keep files, oldest name first (not those being written, nor the unreadable)."""
        try:
            return sorted(p for p in self.folder.iterdir() if p.name.startswith(PREFIX) and p.suffix == SUFFIX)
        except OSError:
            return []
