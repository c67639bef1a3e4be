"""The SQLite ledger: streams and decisions in the catalogue's database, one BEGIN IMMEDIATE transaction a call.

Every call runs whole, as one function, on one connection: no SQL compiled at run time (sqlite3 keeps its
prepared statements). The players' loop (a batch's decisions, stops, heartbeats, look-ups) runs on the event loop
itself while SQLite grants its lock at once: a transaction there costs less than the two thread switches around
it, and never waits (busy timeout 0; that connection leaves the WAL's checkpoints, and their fsyncs, to the
thread). A call that finds the file locked (another process writing, a backup), the long ones (sweeps, the change
log's drain) and any call while one is queued there run in a thread of the ledger's own, which waits for the lock
as long as the busy timeout allows; so the event loop never waits on the file lock.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import orjson
from sqlalchemy.engine import make_url

from playgate.admission import by_age, decide, device_window_s
from playgate.batch import GroupCommit
from playgate.catalog.db import SQLITE_BUSY_TIMEOUT_MS, check_url, configure_sqlite_connection
from playgate.domain import (
    Admission,
    Decision,
    Device,
    EndedStream,
    Outcome,
    Policy,
    Reason,
    Status,
    Stream,
    new_id,
    parse_reason,
)
from playgate.errors import Unavailable
from playgate.ledger.protocol import ChangeLog, KeyClaim

T = TypeVar("T")
log = logging.getLogger("playgate.ledger")
# SQLite's answers that mean "the lock is taken" (primary codes; the extended ones carry them in their low byte).
_LOCK_TAKEN = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# Write transactions on the event loop's connection between two checkpoints of the WAL (run on the thread): at a
# few pages a transaction, a WAL of some tens of MB. Each checkpoint holds the calls for its short second pass (and
# its fsync): every 300 transactions, several times a second at C = 10, that put the p99 at 7 to 13 ms (median 9.0,
# 7 runs from outside); every 1,500, at 5 to 7 ms (median 5.8), the throughput unchanged. At C = 1,000 the p99 went
# from 17 to 18.5 ms (2 runs each): a longer first pass leaves more for the held second one.
CHECKPOINT_EVERY = 1500
# The largest batch (of decisions, of stops) run on the event loop: a larger one (hundreds of players at once) runs
# on the thread, where SQLite's own work lets the event loop go on with other requests meanwhile; on the loop it
# would hold them all up for milliseconds (the tail latency of 1,000 players, measured). Not much smaller: on the
# thread, with the event loop busy, each statement waits for the GIL again (up to its 5 ms switch interval), so a
# batch of 17 to 20 (C = 1,000, 20 viewers) took tens of ms there; at 64 instead of 16 the p99 from outside was
# 35 to 47 ms against 48 to 64 (4 runs each, alternated, on a slow machine).
INLINE_BATCH = 64

# Turns of the event loop a batch of stops waits for the worker's next decisions to take it into their transaction
# (decide) before committing on its own. At C = 10 (10 viewers) without it, nine stops in ten went in transactions of
# their own and the ledger wrote one transaction for every 2.3 decisions; after 4 turns three stops in ten did, one
# transaction for every 3.9 decisions, and the outside generator's C = 10 line gave 4.9 to 8.1% more decisions (the
# builds with and without it on one core at once, four pairs). After 2 turns two stops in three still went alone;
# 8 turns made 1.006 and 1.027x the decisions of 4 in two pairs, within what two pairs can tell apart.
STOP_LINGER_TURNS = 4


class _LockTaken(Exception):
    """An inline call found SQLite's lock taken: nothing of it was written; it runs on the thread instead."""


# A stop's parameters as STOP takes them: the user, the stream ids (a JSON list, or None for all), the video or None,
# the instant a lease must not run past to be ended (None: any); then the reason its ends are recorded with (None: not
# recorded), which STOP does not take.
_StopArgs = tuple[str, bytes | None, str | None, float | None, Reason | None]

# The statements, whole: a list goes in as one JSON array (`IN (SELECT value FROM json_each(?))`), and an
# optional filter as a parameter that may be NULL, so that each is one prepared statement whatever the call.
SELECT_PRIORS = (
    'SELECT request_id, user_id, video_id, device_id, status, active, "limit", decided_at, stream_id, reason, '
    "expires_at, shadow_reason, started_at, away FROM decisions WHERE request_id IN (SELECT value FROM json_each(?))"
)
SELECT_DECISION = (
    'SELECT request_id, user_id, video_id, device_id, status, active, "limit", decided_at, stream_id, reason, '
    "expires_at, shadow_reason, started_at, away FROM decisions WHERE request_id = ?"
)
INSERT_DECISION = (
    'INSERT INTO decisions (request_id, user_id, video_id, device_id, status, active, "limit", decided_at, '
    "stream_id, reason, expires_at, shadow_reason, started_at, away) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
KEEP_DECISION = INSERT_DECISION + " ON CONFLICT DO NOTHING"
SELECT_USERS_STREAMS = (
    "SELECT id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away FROM streams "
    "WHERE user_id IN (SELECT value FROM json_each(?))"
)
SELECT_LIVE_STREAMS = (
    "SELECT id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away FROM streams "
    "WHERE user_id = ? AND expires_at > ? ORDER BY started_at, id"
)
SELECT_STREAM = (
    "SELECT id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away FROM streams "
    "WHERE id = ? AND expires_at > ?"
)
INSERT_STREAM = (
    "INSERT INTO streams (id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
)
DELETE_STREAMS = "DELETE FROM streams WHERE id IN (SELECT value FROM json_each(?))"
RENEW_STREAM = "UPDATE streams SET expires_at = ? WHERE id = ?"
# restore(): a stream absent is stored as given; one known here keeps its fields and takes the later expiry.
RESTORE_STREAM = (
    INSERT_STREAM + " ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE streams.expires_at < excluded.expires_at"
)
HEARTBEAT = (
    "UPDATE streams SET expires_at = ?1 WHERE id = ?2 AND expires_at > ?3 AND (?4 IS NULL OR user_id = ?4) "
    "RETURNING id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away"
)
STOP = (
    "DELETE FROM streams WHERE user_id = ?1 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2))) "
    "AND (?3 IS NULL OR video_id = ?3) AND (?4 IS NULL OR expires_at <= ?4) "
    "RETURNING id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away"
)
STOP_VIDEO = (
    "DELETE FROM streams WHERE video_id = ? "
    "RETURNING id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away"
)
SWEEP_STREAMS = (
    "DELETE FROM streams WHERE expires_at <= ? "
    "RETURNING id, user_id, video_id, device_id, started_at, expires_at, device_name, kinds, away"
)
SWEEP_DECISIONS = "DELETE FROM decisions WHERE decided_at < ?"
SWEEP_KEYS = "DELETE FROM idempotency_keys WHERE created_at < ?"
COUNT_ACTIVE = "SELECT count(*) FROM streams WHERE expires_at > ?"
CLAIM_KEY = (
    "INSERT INTO idempotency_keys (user_id, key, request_id, video_id, created_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
SELECT_KEY = "SELECT request_id, video_id FROM idempotency_keys WHERE user_id = ? AND key = ?"
SELECT_USERS_DEVICES = (
    "SELECT user_id, device_id, last_seen_at FROM devices WHERE user_id IN (SELECT value FROM json_each(?))"
)
SELECT_DEVICES = (
    "SELECT user_id, device_id, last_seen_at FROM devices WHERE user_id = ? ORDER BY last_seen_at, device_id"
)
SEE_DEVICE = (
    "INSERT INTO devices (user_id, device_id, last_seen_at) VALUES (?, ?, ?) "
    "ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at"
)
FORGET_DEVICE = "DELETE FROM devices WHERE user_id = ? AND device_id = ?"
# drain_changes: logged events recorded in one transaction, on the event loop like the players' calls, and the most
# such transactions one call runs. On the ledger's thread, with the event loop busy, a chunk of 1,024 took 25 to
# 40 ms: each of its statements waited for the GIL again (up to the 5 ms switch interval), while every decision and
# stop queued behind it; that was most of the p99 at C = 10 (about 40 ms on a slow machine). A chunk of 128 holds
# the event loop for a few milliseconds at most.
DRAIN_CHUNK = 128
MAX_DRAIN_CHUNKS = 1000


def _stream(row: Sequence[Any]) -> Stream:
    return Stream(
        id=row[0],
        user_id=row[1],
        video_id=row[2],
        device_id=row[3],
        started_at=row[4],
        expires_at=row[5],
        device_name=row[6],
        kinds=tuple(orjson.loads(row[7])) if row[7] != "[]" else (),
        away=bool(row[8]),
    )


def _decision(row: Sequence[Any]) -> Decision:
    reason, tag = parse_reason(row[9]) if row[9] else (None, None)
    return Decision(
        request_id=row[0],
        user_id=row[1],
        video_id=row[2],
        device_id=row[3],
        status=Status(row[4]),
        active=row[5],
        limit=row[6],
        decided_at=row[7],
        stream_id=row[8],
        reason=reason,
        expires_at=row[10],
        reason_tag=tag,
        shadow_reason=row[11],
        started_at=row[12],
        away=bool(row[13]),
    )


def _decision_values(d: Decision) -> tuple[Any, ...]:
    return (
        d.request_id,
        d.user_id,
        d.video_id,
        d.device_id,
        d.status.value,
        d.active,
        d.limit,
        d.decided_at,
        d.stream_id,
        d.why,
        d.expires_at,
        d.shadow_reason,
        d.started_at,
        d.away,
    )


def _stream_values(s: Stream) -> tuple[Any, ...]:
    kinds = orjson.dumps(list(s.kinds)).decode() if s.kinds else "[]"
    return (s.id, s.user_id, s.video_id, s.device_id, s.started_at, s.expires_at, s.device_name, kinds, s.away)


def _json_list(values: Iterable[str]) -> bytes:
    return orjson.dumps(list(values))


def _live_and_expired(rows: Iterable[Sequence[Any]], now: float) -> tuple[list[Stream], list[EndedStream]]:
    """The streams a stop deleted: those still active, and the ends of those whose lease had run out (not swept
    yet), recorded as `expired` whatever the stop, as the sweep would have, and as the Redis ledger's stop does."""
    live: list[Stream] = []
    expired: list[EndedStream] = []
    for row in rows:
        stream = _stream(row)
        if stream.live(now):
            live.append(stream)
        else:
            expired.append(EndedStream(stream, Reason.expired))
    return live, expired


def _ends(streams: Iterable[Stream], reason: Reason | None) -> list[EndedStream]:
    """Stopped streams as ends to record, if their stop has a reason to record."""
    return [] if reason is None else [EndedStream(s, reason) for s in streams]


def database_path(url: str) -> str:
    """The file of a SQLite database URL (`sqlite+aiosqlite:///path`)."""
    check_url(url)  # ConfigError for anything but a file
    return str(make_url(url).database)


class SqlLedger:
    """Ledger on SQLite: safe across processes sharing the file, since each call holds the write lock."""

    announces_stops = False  # its process's fan-out tells the sockets

    def __init__(
        self,
        url: str,
        *,
        lease_s: float,
        decision_ttl_s: float,
        clock: Callable[[], float],
        events: ChangeLog | None = None,
    ) -> None:
        self._path = database_path(url)
        # The audit trail and webhook outbox: each change is logged in its own transaction, and recorded with the
        # others logged meanwhile in a later one (drain_changes).
        self._events = events
        self._lease_s = lease_s
        self._decision_ttl_s = decision_ttl_s
        self._clock = clock
        # The thread's connection: calls queue there in order, and wait for the file's lock (the busy timeout).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playgate-ledger")
        self._conn: sqlite3.Connection | None = None
        self._queued = 0  # calls sent to the thread and not yet answered
        # The event loop's connection (made on first use, in the loop's thread), which never waits for the lock.
        self._inline: sqlite3.Connection | None = None
        self._inline_thread = 0
        self._inline_writes = 0  # write transactions since the last checkpoint was asked of the thread
        self._checkpoint: asyncio.Future[Any] | None = None
        self._stops: GroupCommit[_StopArgs, list[Stream]] = GroupCommit(
            self._stop_together, linger_turns=STOP_LINGER_TURNS
        )

    # ---- the thread and its connection -------------------------------------------------------------

    async def _run(self, call: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """Run `call(conn, *args)`: an `inline` call on the event loop if the thread has nothing queued and SQLite
        grants the lock at once, else (and any other call) on the ledger's thread. A failing database file
        becomes Unavailable."""
        try:
            if inline and not self._queued and self._inline_thread in (0, threading.get_ident()):
                try:
                    return self._call_inline(call, *args)
                except _LockTaken:
                    pass
            self._queued += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(self._thread, partial(self._call, call, *args))
            finally:
                self._queued -= 1
        except (sqlite3.OperationalError, OSError) as exc:
            raise Unavailable(f"The database does not answer: {type(exc).__name__}: {exc}") from exc

    def _call(self, call: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            # Made, used and closed on the ledger's thread alone (sqlite3's same-thread check stays on).
            self._conn = self._connect(SQLITE_BUSY_TIMEOUT_MS)
        return call(self._conn, *args)

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        configure_sqlite_connection(conn, busy_timeout_ms=busy_timeout_ms)
        return conn

    def _call_inline(self, call: Callable[..., T], *args: Any) -> T:
        """`call` on the event loop's connection; _LockTaken (its transaction rolled back) if it would wait."""
        conn = self._inline
        if conn is None:
            conn = self._inline = self._connect(0)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the thread checkpoints (_checkpoint_soon)
            self._inline_thread = threading.get_ident()
        changes = conn.total_changes
        try:
            result = call(conn, *args)
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _LOCK_TAKEN:  # absent on errors not from SQLite
                raise _LockTaken from exc
            raise
        if conn.total_changes != changes:
            self._inline_writes += 1
            if self._inline_writes >= CHECKPOINT_EVERY and self._checkpoint is None:
                self._checkpoint_soon()
        return result

    def _checkpoint_soon(self) -> None:
        """Copy the WAL's pages back into the database file, on the thread, in two passes (PASSIVE: neither waits
        for a reader or a writer). The first copies what is there while calls go on on the event loop, appending
        more; the second copies what they appended, with calls sent to the thread meanwhile: behind it, the first
        write finds the whole WAL copied back and starts it over (with writes going on through every pass it would
        never start over, and grow). Calls wait only for the short second pass (fsyncs included): with every call
        held for a whole pass, the p99 at C = 10 was twice as long (11 ms against 5 without checkpoints)."""
        self._inline_writes = 0
        self._checkpoint = self._checkpoint_pass(hold=False)

    def _checkpoint_pass(self, *, hold: bool) -> asyncio.Future[Any]:
        """One PASSIVE checkpoint on the thread; `hold`: calls go to the thread until it is done. A first pass is
        followed by the holding one."""
        if hold:
            self._queued += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, partial(self._call, lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        )

        def done(f: asyncio.Future[Any]) -> None:
            if hold:
                self._queued -= 1
            failed = not f.cancelled() and f.exception() is not None
            if failed:
                log.warning("WAL checkpoint failed (tried again later): %s", f.exception())
            self._checkpoint = None if hold or failed or f.cancelled() else self._checkpoint_pass(hold=True)

        future.add_done_callback(done)
        return future

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[None]:
        """A transaction holding SQLite's write lock from its start, so that no other process interleaves."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ---- admission ---------------------------------------------------------------------------------

    async def decide(self, admissions: Sequence[Admission]) -> list[Outcome]:
        """Decide the batch in one write transaction: read priors and streams, apply the rule, write the diff. The
        stops queued meanwhile (waiting for their own group commit) go first in the same transaction, and are
        answered after it: one commit where there were two, and the slots they free count for this batch."""
        if not admissions:
            return []
        stops = self._stops.take()
        try:
            outcomes, stopped = await self._run(
                self._decide,
                admissions,
                [stop for stop, _ in stops],
                inline=len(admissions) + len(stops) <= INLINE_BATCH,
            )
        except Exception as exc:
            GroupCommit.settle(stops, exc)
            raise
        except BaseException:  # cancelled (a shutdown): the stops' callers are not left waiting
            GroupCommit.settle(stops, Unavailable("The service is shutting down; the stop may not be written."))
            raise
        GroupCommit.settle(stops, stopped)
        return outcomes

    def _decide(
        self, conn: sqlite3.Connection, admissions: Sequence[Admission], stops: Sequence[_StopArgs]
    ) -> tuple[list[Outcome], list[list[Stream]]]:
        request_ids = _json_list({a.request.request_id for a in admissions})
        user_ids = _json_list({a.request.user_id for a in admissions})
        with self._write(conn):
            now = self._clock()
            stopped = self._stopped(conn, stops, now)
            priors = {row[0]: _decision(row) for row in conn.execute(SELECT_PRIORS, (request_ids,))}
            before: dict[str, list[Stream]] = defaultdict(list)
            for row in conn.execute(SELECT_USERS_STREAMS, (user_ids,)):
                before[row[1]].append(_stream(row))
            after = {user_id: list(streams) for user_id, streams in before.items()}
            devices = self._devices_of(conn, admissions)
            devices_before = {user_id: dict(known) for user_id, known in devices.items()}
            seen: set[str] = set()
            outcomes = []
            fresh: list[tuple[Any, ...]] = []
            decided: list[tuple[Decision, Sequence[EndedStream], Policy | None]] = []
            for admission in admissions:
                request = admission.request
                prior = priors.get(request.request_id)
                verdict = decide(
                    request,
                    streams=after.get(request.user_id, []),
                    quota=admission.quota,
                    now=now,
                    lease_s=self._lease_s,
                    new_stream_id=new_id(),
                    prior=prior,
                    devices=devices.get(request.user_id),
                )
                after[request.user_id] = list(verdict.streams)
                if verdict.devices is not None:
                    devices[request.user_id] = dict(verdict.devices)
                    seen.add(request.user_id)
                if prior is None:
                    # A duplicate later in the same batch gets this decision as its prior.
                    priors[request.request_id] = verdict.decision
                    fresh.append(_decision_values(verdict.decision))
                    decided.append((verdict.decision, verdict.ended, admission.quota.rules.on_limit or Policy.deny))
                outcomes.append(Outcome(verdict.decision, verdict.ended, verdict.conflicts, again=prior is not None))
            self._write_diff(conn, before, after)
            for user_id in seen:
                self._write_devices(conn, user_id, devices_before.get(user_id, {}), devices[user_id])
            if fresh:
                conn.executemany(INSERT_DECISION, fresh)
            if self._events is not None and decided:
                self._events.decided(conn, decided)
        return outcomes, stopped

    def _ended(self, conn: sqlite3.Connection, ended: Sequence[EndedStream], at: float) -> None:
        """Log streams this transaction ended, in it (nothing without a ChangeLog)."""
        if self._events is not None and ended:
            self._events.ended(conn, ended, at)

    @staticmethod
    def _devices_of(conn: sqlite3.Connection, admissions: Sequence[Admission]) -> dict[str, dict[str, float]]:
        """The registered devices of the batch's users under a device cap (none read for the others)."""
        capped = {a.request.user_id for a in admissions if device_window_s(a.quota) is not None}
        devices: dict[str, dict[str, float]] = {user_id: {} for user_id in capped}
        if capped:
            for user_id, device_id, last_seen_at in conn.execute(SELECT_USERS_DEVICES, (_json_list(capped),)):
                devices[user_id][device_id] = last_seen_at
        return devices

    @staticmethod
    def _write_devices(conn: sqlite3.Connection, user_id: str, old: dict[str, float], new: dict[str, float]) -> None:
        """Write what changed of a user's devices: those seen anew, and those forgotten (past the window)."""
        gone = [(user_id, d) for d in old.keys() - new.keys()]
        if gone:
            conn.executemany(FORGET_DEVICE, gone)
        conn.executemany(SEE_DEVICE, [(user_id, d, t) for d, t in new.items() if old.get(d) != t])

    @staticmethod
    def _write_diff(conn: sqlite3.Connection, before: dict[str, list[Stream]], after: dict[str, list[Stream]]) -> None:
        old = {s.id: s for streams in before.values() for s in streams}
        new = {s.id: s for streams in after.values() for s in streams}
        gone = old.keys() - new.keys()
        if gone:
            conn.execute(DELETE_STREAMS, (_json_list(gone),))
        inserted = [_stream_values(s) for sid, s in new.items() if sid not in old]
        if inserted:
            conn.executemany(INSERT_STREAM, inserted)
        renewed = [(s.expires_at, sid) for sid, s in new.items() if sid in old and old[sid].expires_at != s.expires_at]
        if renewed:
            conn.executemany(RENEW_STREAM, renewed)

    # ---- lookups -----------------------------------------------------------------------------------

    async def decision(self, request_id: str) -> Decision | None:
        """The stored decision of a request, if any."""
        return await self._run(self._one_decision, request_id, inline=True)

    @staticmethod
    def _one_decision(conn: sqlite3.Connection, request_id: str) -> Decision | None:
        row = conn.execute(SELECT_DECISION, (request_id,)).fetchone()
        return _decision(row) if row else None

    async def keep(self, decisions: Sequence[Decision]) -> None:
        """Insert the decisions of requests that have none yet."""
        if decisions:
            await self._run(self._keep, decisions)

    def _keep(self, conn: sqlite3.Connection, decisions: Sequence[Decision]) -> None:
        with self._write(conn):
            if self._events is None:
                conn.executemany(KEEP_DECISION, [_decision_values(d) for d in decisions])
                return
            # One at a time to know which were new: only those are logged (a rare path: dead letters).
            kept = [d for d in decisions if conn.execute(KEEP_DECISION, _decision_values(d)).rowcount == 1]
            if kept:
                self._events.decided(conn, [(d, (), None) for d in kept])

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's streams whose lease has not run out, oldest first."""
        return await self._run(self._streams, user_id, inline=True)

    def _streams(self, conn: sqlite3.Connection, user_id: str) -> list[Stream]:
        return [_stream(row) for row in conn.execute(SELECT_LIVE_STREAMS, (user_id, self._clock()))]

    async def stream(self, stream_id: str) -> Stream | None:
        """One active stream."""
        return await self._run(self._one_stream, stream_id, inline=True)

    def _one_stream(self, conn: sqlite3.Connection, stream_id: str) -> Stream | None:
        row = conn.execute(SELECT_STREAM, (stream_id, self._clock())).fetchone()
        return _stream(row) if row else None

    async def count_active(self) -> int:
        """Streams whose lease has not run out."""
        return await self._run(self._count_active, inline=True)

    def _count_active(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute(COUNT_ACTIVE, (self._clock(),)).fetchone()[0])

    # ---- changes -----------------------------------------------------------------------------------

    async def heartbeat(self, stream_id: str, user_id: str | None = None) -> Stream | None:
        """Push the lease of an active stream to now + lease_s."""
        return await self._run(self._heartbeat, stream_id, user_id, inline=True)

    def _heartbeat(self, conn: sqlite3.Connection, stream_id: str, user_id: str | None) -> Stream | None:
        with self._write(conn):
            now = self._clock()
            row = conn.execute(HEARTBEAT, (now + self._lease_s, stream_id, now, user_id)).fetchone()
        return _stream(row) if row else None

    async def stop(
        self,
        stream_ids: Sequence[str] | None,
        user_id: str,
        video_id: str | None = None,
        *,
        reason: Reason | None = None,
        announce: bool = False,
        unless_renewed_after: float | None = None,
    ) -> list[Stream]:
        """Delete the user's chosen streams (not one whose lease runs past `unless_renewed_after`); return those
        that were still active, their ends recorded with `reason` (if any) in the same transaction, as are, `expired`,
        the ends of those whose lease had run out. Stops that
        arrive together are committed in one transaction (answered after it), as the worker's decisions are; the
        worker's next batch takes them into its own when it comes first (decide).
        `announce` is the caller's to do (announces_stops is false)."""
        ids = _json_list(stream_ids) if stream_ids is not None else None
        return await self._stops((user_id, ids, video_id, unless_renewed_after, reason))

    async def _stop_together(self, stops: Sequence[_StopArgs]) -> list[list[Stream]]:
        return await self._run(self._stop, stops, inline=len(stops) <= INLINE_BATCH)

    def _stop(self, conn: sqlite3.Connection, stops: Sequence[_StopArgs]) -> list[list[Stream]]:
        with self._write(conn):
            return self._stopped(conn, stops, self._clock())

    def _stopped(self, conn: sqlite3.Connection, stops: Sequence[_StopArgs], now: float) -> list[list[Stream]]:
        """In the transaction under way: the stops, each one's streams that were still active, their ends logged."""
        if not stops:
            return []
        stopped: list[list[Stream]] = []
        ends: list[EndedStream] = []
        for stop in stops:
            live, expired = _live_and_expired(conn.execute(STOP, stop[:4]).fetchall(), now)
            stopped.append(by_age(live))
            ends += _ends(live, stop[4]) + expired
        self._ended(conn, ends, now)
        return stopped

    async def stop_video(self, video_id: str, *, reason: Reason | None = None) -> list[Stream]:
        """Delete every stream of the video; return those that were still active, their ends recorded with
        `reason` (if any) in the same transaction (and, `expired`, those whose lease had run out)."""
        return await self._run(self._stop_video, video_id, reason)

    def _stop_video(self, conn: sqlite3.Connection, video_id: str, reason: Reason | None) -> list[Stream]:
        with self._write(conn):
            now = self._clock()
            live, expired = _live_and_expired(conn.execute(STOP_VIDEO, (video_id,)).fetchall(), now)
            stopped = by_age(live)
            self._ended(conn, _ends(stopped, reason) + expired, now)
        return stopped

    async def restore(self, streams: Sequence[Stream]) -> int:
        """Store the streams absent or expired here; a live one keeps the later expiry; how many were written."""
        return await self._run(self._restore, streams)

    def _restore(self, conn: sqlite3.Connection, streams: Sequence[Stream]) -> int:
        with self._write(conn):
            now = self._clock()
            written = 0
            for s in streams:
                if s.live(now):
                    written += conn.execute(RESTORE_STREAM, _stream_values(s)).rowcount
        return written

    async def sweep(self) -> list[EndedStream]:
        """Delete expired streams (returned, to be announced), and decisions and keys past decision_ttl_s. On the event
        loop, as the players' calls: on the thread, each second's sweep held them up for 15 to 55 ms (DRAIN_CHUNK)."""
        return await self._run(self._sweep, inline=True)

    def _sweep(self, conn: sqlite3.Connection) -> list[EndedStream]:
        with self._write(conn):
            now = self._clock()
            rows = conn.execute(SWEEP_STREAMS, (now,)).fetchall()
            horizon = now - self._decision_ttl_s
            conn.execute(SWEEP_DECISIONS, (horizon,))
            conn.execute(SWEEP_KEYS, (horizon,))
            ended = [EndedStream(_stream(row), Reason.expired) for row in rows]
            self._ended(conn, ended, now)
        return ended

    async def claim_key(self, user_id: str, key: str, request_id: str, fingerprint: str) -> KeyClaim:
        """Insert the key if new; either way answer with the request it is bound to."""
        return await self._run(self._claim_key, user_id, key, request_id, fingerprint, inline=True)

    def _claim_key(
        self, conn: sqlite3.Connection, user_id: str, key: str, request_id: str, fingerprint: str
    ) -> KeyClaim:
        # The fingerprint goes in the `video_id` column, which held the video alone before (a key is bound to the
        # whole request since): the same width, no migration, and a key bound before reads as its video.
        with self._write(conn):
            inserted = conn.execute(CLAIM_KEY, (user_id, key, request_id, fingerprint, self._clock()))
            if inserted.rowcount == 1:
                return KeyClaim(request_id, fingerprint, created=True)
            row = conn.execute(SELECT_KEY, (user_id, key)).fetchone()
        return KeyClaim(row[0], row[1], created=False)

    # ---- the change log ----------------------------------------------------------------------------

    async def drain_changes(self) -> int:
        """Have the ChangeLog record what it logged, oldest first, a chunk per transaction (other calls run between
        them), each deleting what it records from the log: so each change is recorded once, whichever process
        drains. How many logged events were recorded."""
        drained = 0
        for _ in range(MAX_DRAIN_CHUNKS):
            recorded = await self._run(self._record_changes, inline=True)
            drained += recorded
            if recorded < DRAIN_CHUNK:
                break
            await asyncio.sleep(0)  # run inline, a chunk does not yield: the players' calls go between chunks
        return drained

    def _record_changes(self, conn: sqlite3.Connection) -> int:
        if self._events is None or not self._events.waiting(conn):  # no write lock taken for an empty log
            return 0
        with self._write(conn):
            return self._events.record(conn, DRAIN_CHUNK)

    # ---- devices -----------------------------------------------------------------------------------

    async def devices(self, user_id: str) -> list[Device]:
        """The user's registered devices, least recently seen first."""
        return await self._run(self._devices, user_id)

    @staticmethod
    def _devices(conn: sqlite3.Connection, user_id: str) -> list[Device]:
        return [Device(row[1], row[0], row[2]) for row in conn.execute(SELECT_DEVICES, (user_id,))]

    async def forget_device(self, user_id: str, device_id: str) -> bool:
        """Remove a registered device (its streams play on); False if it was not registered."""
        return await self._run(self._forget_device, user_id, device_id)

    def _forget_device(self, conn: sqlite3.Connection, user_id: str, device_id: str) -> bool:
        with self._write(conn):
            return conn.execute(FORGET_DEVICE, (user_id, device_id)).rowcount > 0

    # ---- health ------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise Unavailable unless the database file answers."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close the event loop's connection, then the thread's in its thread, then end the thread."""

        def close(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._inline is not None:
            self._inline.close()
            self._inline = None
        while (checkpoint := self._checkpoint) is not None:
            # Its passes done first (a first pass's end starts the second), so that none opens the thread's
            # connection again after it is closed.
            await asyncio.wait([checkpoint])
        if self._conn is not None:
            await self._run(close)
        self._thread.shutdown(wait=True)
