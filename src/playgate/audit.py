"""The audit trail: every decision and every stream's end, stored in the catalogue's database and queried per user.

Recording is off the hot path: `record` only appends to a buffer in memory; a background task (`run`) writes the
buffer in one multi-row INSERT every flush_interval_s (or sooner once batch_size events wait), and prunes events
older than the retention every prune_interval_s (and, on the same schedule, the rows of `also_prune`: shadow
denials). The buffer is bounded: past max_buffered events the oldest are
dropped, counted and logged, so that a database outage cannot exhaust memory. Stopping flushes what is left.
The change logs a ChangeFeed keeps (below) are bounded the same way, to max_backlog entries each.
A companion (the webhook outbox) writes in each batch's transaction: it holds an event iff the trail does.

Embedded (the SQLite ledger in the catalogue's own file), events are not buffered at all: the ledger logs each
change in the very transaction that makes it (a row of ledger_events per event, no index to update: cheap on the
hot path), and a ChangeJournal drain records them later, in batches, with a LedgerEvents, which writes the audit rows
and the companion's rows in the transaction that deletes those changes from the log, on the ledger's sqlite3
connection: a crash keeps a change and its record of it, or the change and its log entry, never one alone. Every
process on the file may drain (each change is recorded by exactly one transaction), and the queries drain first,
so that what was decided before a query is in its answer.

Distributed (the Redis ledger), they are not buffered either: each Lua script that decides or ends streams appends
its change to a change log in Redis in the same call (the outbox of the change); the deciding processes drain it
(a ChangeFeed, read as one consumer group, so that they share the work and a reader's crash leaves its entries to
another), write each batch's events and the companion's rows in one transaction, and only then acknowledge them.
Every event it records carries an id of what it tells of (event_id), unique in the table, and every INSERT skips one
already there: an entry delivered again (its reader died after writing, before acknowledging) is recorded once. The
SQLite journal's events need no id (each is recorded by the transaction that deletes it from the log) and store
none: the unique index holds ids alone, so that they cost no update of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy import Insert, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import InstrumentedAttribute

from playgate.catalog.models import AuditEventRow
from playgate.catalog.service import translate_db_errors
from playgate.domain import Decision, EndedStream, LoggedChange, Outcome, Policy, Stream
from playgate.errors import PlayGateError
from playgate.values import frozen

log = logging.getLogger("playgate.audit")


# Not playgate.values.frozen: mypy reads a descriptor field of a dataclass_transform class through the descriptor
# (a float here, not the column); and one is made at start-up, not per request.
@dataclass(frozen=True, slots=True)
class Retention:
    """Rows of another table pruned beside the audit trail, on its schedule: those whose `column` (epoch seconds)
    is older than `seconds` (the shadow denials, PLAYGATE_SHADOW_RETENTION)."""

    name: str
    column: InstrumentedAttribute[float]
    seconds: float


DECISION = "decision"
STREAM_END = "stream_end"
PAGE_MAX = 1000


@frozen
class AuditEvent:
    """One decision (`outcome` allowed or denied) or one stream's end (`outcome` the reason it ended)."""

    at: float
    kind: str
    user_id: str
    video_id: str
    device_id: str
    outcome: str
    request_id: str | None = None
    stream_id: str | None = None
    reason: str | None = None
    policy: str | None = None
    active: int | None = None
    limit: int | None = None
    shadow: str | None = None  # the reason the plan's shadow rules would have denied it (None: they would not)


@frozen
class StoredEvent:
    """An AuditEvent as stored, with its id (ids grow: the cursor of the queries)."""

    id: int
    event: AuditEvent


def decision_event(decision: Decision, policy: Policy) -> AuditEvent:
    """The audit event of a decision."""
    return AuditEvent(
        at=decision.decided_at,
        kind=DECISION,
        user_id=decision.user_id,
        video_id=decision.video_id,
        device_id=decision.device_id,
        outcome=decision.status.value,
        request_id=decision.request_id,
        stream_id=decision.stream_id,
        reason=decision.why,
        policy=policy.value,
        active=decision.active,
        limit=decision.limit,
        shadow=decision.shadow_reason,
    )


def end_event(stream: Stream, reason: str, at: float) -> AuditEvent:
    """The audit event of a stream's end, for `reason` (the EndedStream reasons, or `stopped` by its player)."""
    return AuditEvent(
        at=at,
        kind=STREAM_END,
        user_id=stream.user_id,
        video_id=stream.video_id,
        device_id=stream.device_id,
        outcome=reason,
        stream_id=stream.id,
        reason=reason,
    )


def end_events(ended: Iterable[EndedStream], at: float) -> list[AuditEvent]:
    """The audit events of streams that ended without their device asking."""
    return [end_event(e.stream, e.reason.value, at) for e in ended]


def event_id(event: AuditEvent) -> str | None:
    """What an event tells of, unique among events: `decision:<request id>` or `stream_end:<stream id>`."""
    if event.kind == DECISION and event.request_id is not None:
        return f"{DECISION}:{event.request_id}"
    if event.kind == STREAM_END and event.stream_id is not None:
        return f"{STREAM_END}:{event.stream_id}"
    return None


def change_events(changes: Iterable[LoggedChange], policy: Policy) -> list[AuditEvent]:
    """The audit events of changes a ledger logged: each decision, then the streams it ended; or the ends alone."""
    events: list[AuditEvent] = []
    for change in changes:
        if change.decision is not None:
            events.append(decision_event(change.decision, change.policy or policy))
        events += end_events(change.ended, change.at)
    return events


@runtime_checkable
class ChangeJournal(Protocol):
    """A ledger that logs its changes with them in the audit trail's own database, and records them itself, a
    batch per transaction that also forgets them (the SQLite ledger's ledger_events)."""

    async def drain_changes(self) -> int:
        """Record what was logged, oldest first; how many logged events."""
        ...


@runtime_checkable
class ChangeFeed(Protocol):
    """A ledger that logs its changes with them, for the audit trail to drain (the Redis ledger's change logs)."""

    async def read_changes(self, consumer: str, count: int, claim_idle_s: float) -> list[LoggedChange]:
        """Changes not yet acknowledged, for `consumer`: those left unacknowledged longer than claim_idle_s by any
        reader, then new ones; each is delivered again until acknowledged."""
        ...

    async def ack_changes(self, changes: Sequence[LoggedChange]) -> None:
        """Acknowledge (and forget) changes the audit trail recorded."""
        ...

    async def trim_changes(self, keep: int) -> int:
        """Bound each log to its newest `keep` entries, read or not; how many older ones were removed."""
        ...

    async def unrecorded_since(self) -> float | None:
        """When the oldest change still in the logs (read or not: not yet recorded) was logged, by the store's
        clock (epoch seconds); None when every change is recorded."""
        ...


class Companion(Protocol):
    """What writes beside the audit trail, in the same transaction as each batch (the webhook outbox)."""

    async def write(self, conn: AsyncConnection, events: Iterable[AuditEvent]) -> int:
        """Write what `events` mean to it, on `conn` (the batch's transaction)."""
        ...


class SqliteCompanion(Protocol):
    """What writes beside the audit trail inside the SQLite ledger's transaction (the webhook outbox)."""

    def write_sqlite(self, conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> int:
        """Write what `events` mean to it, on the ledger's connection (its open transaction)."""
        ...


class LedgerEvents:
    """The SQLite ledger's ChangeLog (ledger.protocol), on its connection, in transactions it holds open (nothing
    here begins or commits). Each transaction's changes are logged in it as rows of ledger_events: their audit rows
    but the ids (no index to update: a few microseconds on the hot path). `record` copies what was logged into
    audit_events in SQL, writes the companion's rows beside them, and deletes it from the log."""

    def __init__(self, policy: Policy, companion: SqliteCompanion | None = None) -> None:
        self.policy = policy
        self._companion = companion

    def log(self, conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> None:
        """Log `events` on `conn`, to be recorded later."""
        if events:
            conn.executemany(_LOG_EVENTS, map(_fields_of, events))

    def decided(
        self, conn: sqlite3.Connection, outcomes: Sequence[tuple[Decision, Sequence[EndedStream], Policy | None]]
    ) -> None:
        """Log new decisions (each with the policy at the limit it was made under, else PLAYGATE_POLICY) and the
        streams each ended to make room, and list the shadow policy's would-be denials among them at once (the
        worker then lists none: Worker.step)."""
        events: list[AuditEvent] = []
        shadowed: list[tuple[str, str, str, str, str, str, float]] = []
        for decision, ended, policy in outcomes:
            events.append(decision_event(decision, policy or self.policy))
            events += end_events(ended, decision.decided_at)
            if decision.shadow_reason is not None:
                shadowed.append(_shadow_values(decision))
        self.log(conn, events)
        if shadowed:
            conn.executemany(_SQLITE_SHADOW_INSERT, shadowed)

    def ended(self, conn: sqlite3.Connection, ended: Sequence[EndedStream], at: float) -> None:
        """Log streams ended at `at` without a decision."""
        self.log(conn, end_events(ended, at))

    @staticmethod
    def waiting(conn: sqlite3.Connection) -> bool:
        """Whether anything logged waits to be recorded."""
        return conn.execute(_ANY_CHANGE).fetchone() is not None

    def record(self, conn: sqlite3.Connection, count: int) -> int:
        """Record the oldest `count` logged events, in order, and forget them; how many there were."""
        found, last = conn.execute(_CHUNK, (count,)).fetchone()
        if not found:
            return 0
        conn.execute(_RECORD_EVENTS, (last,))
        if self._companion is not None:
            events = [AuditEvent(*row) for row in conn.execute(_LOGGED_EVENTS, (last,))]
            self._companion.write_sqlite(conn, events)
        conn.execute(_FORGET_EVENTS, (last,))
        return int(found)


class AuditTrail:
    """Buffers audit events, writes them in batches, prunes old ones and answers queries; the clock is passed in."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        policy: Policy,
        retention_s: float,
        clock: Callable[[], float],
        batch_size: int = 1000,
        flush_interval_s: float = 0.5,
        prune_interval_s: float = 3600.0,
        max_buffered: int = 100_000,
        max_backlog: int = 1_000_000,
        trim_interval_s: float = 5.0,
        companion: Companion | None = None,
        also_prune: Sequence[Retention] = (),
        in_ledger: bool = False,
        ledger_in_catalogue: bool = False,
    ) -> None:
        self._engine = engine
        # The ledger records decisions and stream ends itself (embedded LedgerEvents, distributed its change log,
        # drained here): recording them again here would be a second, racing path.
        self.in_ledger = in_ledger
        # Embedded: the ledger's store is the catalogue's database, so what an outage of it kept waits for it.
        self.ledger_in_catalogue = ledger_in_catalogue
        self._companion = companion
        self.policy = policy
        self.retention_s = retention_s
        self._clock = clock
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.prune_interval_s = prune_interval_s
        self.also_prune = tuple(also_prune)
        self._buffer: deque[AuditEvent] = deque(maxlen=max_buffered)
        # The feed's logs are bounded too (PLAYGATE_AUDIT_BACKLOG entries each, looked at every trim_interval_s):
        # while the database does not answer they grow, and Redis's memory is not the place to run out.
        self.max_backlog = max_backlog
        self.trim_interval_s = trim_interval_s
        # The batch being written: out of the buffer, not yet committed, still to be found by end_reason.
        self._writing: list[AuditEvent] = []
        self._full = asyncio.Event()
        self.dropped = 0
        self._feed: ChangeFeed | None = None
        self._consumer = ""
        self._claim_idle_s = 0.0
        self._journal: ChangeJournal | None = None

    def drain_from(self, feed: ChangeFeed, consumer: str, claim_idle_s: float) -> None:
        """Record, from now on, the changes `feed` logs (as `consumer`; taking over another reader's entries left
        unacknowledged claim_idle_s): each run's round drains it after the buffer."""
        self._feed, self._consumer, self._claim_idle_s = feed, consumer, claim_idle_s

    def journal_from(self, journal: ChangeJournal) -> None:
        """Record, from now on, the changes `journal` logs: each run's round, and each query before it reads."""
        self._journal = journal

    async def close_journal(self) -> None:
        """Record what the journal holds, then stop reading it (its ledger closes next)."""
        try:
            await self._drain_journal()
        except PlayGateError as exc:  # nothing is lost: the changes wait in the ledger's log for the next process
            log.warning("audit journal not recorded at shutdown: %s", exc.detail)
        self._journal = None

    async def drain(self) -> int:
        """Record what the journal, then the feed, holds, a batch per transaction; how many (the journal's logged
        transactions, the feed's changes). The feed's
        batches are acknowledged once written; one that fails to be written is left unacknowledged: delivered
        again after claim_idle_s."""
        drained = await self._drain_journal()
        if self._feed is None:
            return drained
        while True:
            changes = await self._feed.read_changes(self._consumer, self.batch_size, self._claim_idle_s)
            if not changes:
                return drained
            await self._write(change_events(changes, self.policy))
            await self._feed.ack_changes(changes)
            drained += len(changes)
            if len(changes) < self.batch_size:
                return drained

    async def _drain_journal(self) -> int:
        """Record what the journal holds."""
        return await self._journal.drain_changes() if self._journal is not None else 0

    async def _catch_up(self) -> None:
        """Before a query: record what the journal holds, so that the answer has every change made before it; if
        the ledger's store refuses now (an outage), the query answers with what was recorded."""
        try:
            await self._drain_journal()
        except PlayGateError as exc:
            log.info("audit query answered without the changes still logged: %s", exc.detail)

    async def _write(self, events: Sequence[AuditEvent]) -> None:
        """Insert `events` (skipping those recorded already) and the companion's rows, in one transaction."""
        if not events:
            return
        async with translate_db_errors(), self._engine.begin() as conn:
            # Core executemany of plain rows: the ORM's bulk path and asdict() cost several times more.
            rows = [dict(zip(_COLUMNS, _values(e), strict=True)) for e in events]
            await conn.execute(insert_ignoring_duplicates(conn, _TABLE), rows)
            if self._companion is not None:  # the webhook outbox: in this batch's transaction
                await self._companion.write(conn, events)

    def record(self, events: Iterable[AuditEvent]) -> None:
        """Keep events for the next write (never blocks, never fails: the oldest are dropped past the bound)."""
        for event in events:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(event)
        if len(self._buffer) >= self.batch_size:
            self._full.set()

    def record_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        """Keep each decision, and the streams each ended to make room (unless the ledger wrote them)."""
        if self.in_ledger:
            return
        self.record(self._outcome_events(outcomes))

    def record_outage(self, outcomes: Iterable[Outcome] = (), ended: Iterable[EndedStream] = ()) -> None:
        """Keep decisions and stream ends made while the ledger's store is down (the outage policy), at once, unless
        that store is the catalogue's database too (embedded: the write-back records them). The write-back's own
        record of them (distributed: its change log) is then skipped by their event ids."""
        if self.ledger_in_catalogue:
            return
        self.record([*self._outcome_events(outcomes), *end_events(ended, self._clock())])

    def _outcome_events(self, outcomes: Iterable[Outcome]) -> list[AuditEvent]:
        """Each decision's event, then those of the streams it ended to make room."""
        events: list[AuditEvent] = []
        for outcome in outcomes:
            events.append(decision_event(outcome.decision, self.policy))
            events += end_events(outcome.ended, outcome.decision.decided_at)
        return events

    def record_ended(self, ended: Iterable[EndedStream]) -> None:
        """Keep streams that ended without their device asking (expired, stopped by an admin, ...), unless the
        ledger wrote them."""
        if self.in_ledger:
            return
        self.record(end_events(ended, self._clock()))

    async def flush(self) -> int:
        """Write what is buffered, a batch per INSERT; how many were written. On a failure they stay buffered."""
        written = 0
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            self._writing = batch
            try:
                await self._write(batch)
            except BaseException:
                self._buffer.extendleft(reversed(batch))
                raise
            finally:
                self._writing = []
            written += len(batch)
        return written

    async def prune(self) -> int:
        """Delete the events older than the retention; how many. The tables of `also_prune` are pruned too (each
        to its own retention; their counts are logged, not returned)."""
        now = self._clock()
        async with translate_db_errors(), self._engine.begin() as conn:
            result = await conn.execute(delete(AuditEventRow).where(AuditEventRow.at < now - self.retention_s))
            for other in self.also_prune:
                table = other.column.class_
                pruned = await conn.execute(delete(table).where(other.column < now - other.seconds))
                if pruned.rowcount:
                    log.info("pruned %d %s older than the retention", pruned.rowcount, other.name)
        return int(result.rowcount or 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every flush_interval_s (sooner when a batch is full) and prune every prune_interval_s, until
        `stop`; then flush what is left."""
        next_prune_at = next_trim_at = self._clock()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_interval_s)
            self._full.clear()
            try:
                await self.flush()
                await self.drain()
                if self._clock() >= next_prune_at:
                    pruned = await self.prune()
                    next_prune_at = self._clock() + self.prune_interval_s
                    if pruned:
                        log.info("pruned %d audit events older than the retention", pruned)
            except PlayGateError as exc:
                log.warning("audit trail not written yet (%d waiting): %s", len(self._buffer), exc.detail)
            except Exception:  # e.g. a row the database refuses: said loudly, and the next round tries again
                log.exception("audit trail not written (%d waiting): the database refused a batch", len(self._buffer))
            if self._feed is not None and self._clock() >= next_trim_at:
                next_trim_at = self._clock() + self.trim_interval_s
                with contextlib.suppress(PlayGateError):  # the feed's store is down: nothing grows there
                    self.dropped += await self._feed.trim_changes(self.max_backlog)
            if self.dropped:
                log.error(
                    "audit trail dropped %d events (more waited than its bound while the database did not answer)",
                    self.dropped,
                )
                self.dropped = 0
        try:
            await self.flush()
        except PlayGateError as exc:
            log.error("audit trail lost %d events at shutdown: %s", len(self._buffer), exc.detail)
        try:
            await self.drain()
        except PlayGateError as exc:  # nothing is lost: the entries wait in the change log for another reader
            log.warning("audit change log not drained at shutdown: %s", exc.detail)

    async def events(
        self, user_id: str, *, since: float | None, until: float | None, after_id: int, limit: int
    ) -> list[StoredEvent]:
        """A user's events in the order they were stored, after the cursor `after_id`, within [since, until)."""
        query = select(AuditEventRow).where(AuditEventRow.user_id == user_id, AuditEventRow.id > after_id)
        if since is not None:
            query = query.where(AuditEventRow.at >= since)
        if until is not None:
            query = query.where(AuditEventRow.at < until)
        query = query.order_by(AuditEventRow.id).limit(min(limit, PAGE_MAX))
        await self._catch_up()
        async with translate_db_errors(), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredEvent(row.id, _event_of(row)) for row in rows]

    async def end_reason(self, user_id: str, stream_id: str) -> str | None:
        """Why a stream of `user_id` ended (`evicted`, `stopped`, `expired`, ...), as recorded: the events still
        buffered first, then those written; None when no end of it is recorded (yet: a lease that ran out is
        recorded when the sweeper next runs, another process's events once it writes them)."""
        for event in itertools.chain(reversed(self._buffer), reversed(self._writing)):
            if event.kind == STREAM_END and event.stream_id == stream_id and event.user_id == user_id:
                return event.reason
        query = (
            select(AuditEventRow.reason)
            .where(
                AuditEventRow.user_id == user_id,
                AuditEventRow.kind == STREAM_END,
                AuditEventRow.stream_id == stream_id,
            )
            .order_by(AuditEventRow.id.desc())
            .limit(1)
        )
        await self._catch_up()
        async with translate_db_errors(), self._engine.connect() as conn:
            reason: str | None = (await conn.execute(query)).scalar_one_or_none()
        return reason

    async def export(self, user_id: str, *, since: float | None, until: float | None) -> AsyncIterator[StoredEvent]:
        """Every event of a user within [since, until), a page at a time."""
        after_id = 0
        while True:
            page = await self.events(user_id, since=since, until=until, after_id=after_id, limit=PAGE_MAX)
            for stored in page:
                yield stored
            if len(page) < PAGE_MAX:
                return
            after_id = page[-1].id


def insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT that skips rows whose unique key is already there (a change recorded again after a redelivery)."""
    if conn.dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


_FIELDS = tuple(AuditEvent.__dataclass_fields__)
_fields_of = operator.attrgetter(*_FIELDS)  # an event's values in the order of _FIELDS, as one tuple
_COLUMNS = (*_FIELDS, "event_id")  # a stored event's columns, in the order of _values
_TABLE = AuditEventRow.metadata.tables[AuditEventRow.__tablename__]


def _values(event: AuditEvent) -> tuple[object, ...]:
    """An event's row, in the order of _COLUMNS."""
    values: tuple[object, ...] = _fields_of(event)
    return (*values, event_id(event))


# The SQLite ledger's change log (LedgerEvents): a row of ledger_events per event, its columns those of _FIELDS, in
# their order (quoted: "limit" is a keyword). The statements are built from AuditEvent's field names alone, no input.
_EVENT_COLUMNS = ", ".join(f'"{name}"' for name in _FIELDS)
_LOG_EVENTS = f"INSERT INTO ledger_events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' for _ in _FIELDS)})"  # noqa: S608
_ANY_CHANGE = "SELECT 1 FROM ledger_events LIMIT 1"
_CHUNK = "SELECT count(*), max(seq) FROM (SELECT seq FROM ledger_events ORDER BY seq LIMIT ?)"
_LOGGED_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM ledger_events WHERE seq <= ? ORDER BY seq"  # noqa: S608
_FORGET_EVENTS = "DELETE FROM ledger_events WHERE seq <= ?"
# Every logged event up to a seq, in order, into audit_events, in SQLite alone (no Python object per event); no
# event_id (each is recorded once: module docstring).
_RECORD_EVENTS = f"INSERT INTO audit_events ({_EVENT_COLUMNS}) {_LOGGED_EVENTS}"

# A shadow denial's row (catalog.models.ShadowDenialRow), as Catalog.record_shadow_denials writes it elsewhere.
_SQLITE_SHADOW_INSERT = (
    "INSERT INTO shadow_denials (user_id, request_id, video_id, device_id, rule, enforced, decided_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _shadow_values(d: Decision) -> tuple[str, str, str, str, str, str, float]:
    assert d.shadow_reason is not None
    return (d.user_id, d.request_id, d.video_id, d.device_id, d.shadow_reason, d.status.value, d.decided_at)


def _event_of(row: object) -> AuditEvent:
    return AuditEvent(**{name: getattr(row, name) for name in _FIELDS})
