"""Webhooks: signed outbound events (`stream.started`, `stream.ended`, `play.denied`) per Standard Webhooks.

The audit trail is the one seam events come through: when it writes audit events (embedded, a batch of the SQLite
ledger's change log, recorded in the SQLite file, `write_sqlite`; distributed, a batch drained from the Redis
ledger's change log, `write`), the Outbox adds the webhook events among them, and one delivery row per configured
endpoint, in the SAME database transaction (so an event is in the outbox if and only if it is in the audit trail).
The Dispatcher, a background task of the worker, sends them: for each endpoint and user only the oldest undelivered
event (a user's later event waits for the earlier one). Events are ordered by their time and sent once settle_s
old, so that one written a little later by another process (each drains the change log every 0.5 s) still goes
first; and, distributed, only those older by settle_s than the oldest change still waiting in the ledger's change
log (`horizon`), so that the changes a killed worker had read, taken over by another only after
PLAYGATE_CLAIM_IDLE, still go before the later ones. A failed try is retried with exponential backoff, every try's
outcome is kept on the delivery row (the delivery log), and a delivery is given up only give_up_s after its first
try. Events are kept as long as the audit trail, then pruned with their delivery log (never while a delivery
waits). Endpoints are the operator's PLAYGATE_WEBHOOK_URLS, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from standardwebhooks.webhooks import Webhook

from playgate.audit import DECISION, STREAM_END, AuditEvent, insert_ignoring_duplicates
from playgate.catalog.models import WebhookDeliveryRow, WebhookEventRow
from playgate.catalog.service import translate_db_errors
from playgate.config import Settings
from playgate.errors import PlayGateError
from playgate.values import frozen

log = logging.getLogger("playgate.webhooks")

STREAM_STARTED = "stream.started"
STREAM_ENDED = "stream.ended"
PLAY_DENIED = "play.denied"
EVENT_TYPES = (STREAM_STARTED, STREAM_ENDED, PLAY_DENIED)

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"  # given up after give_up_s

MAX_ERROR_CHARS = 500
# When the oldest change not yet in the audit trail (so not in the outbox either) was logged; None: there is none.
Horizon = Callable[[], Awaitable[float | None]]

_D = WebhookDeliveryRow
_E = WebhookEventRow
_EVENTS = _E.metadata.tables[_E.__tablename__]
_DELIVERIES = _D.metadata.tables[_D.__tablename__]


def signers(secrets: Sequence[str]) -> list[Webhook]:
    """The Standard Webhooks signers of `whsec_<base64>` secrets (Settings checked their form)."""
    return [Webhook(secret) for secret in secrets]


def sign(webhooks: Sequence[Webhook], msg_id: str, timestamp_s: int, body: str) -> str:
    """The `webhook-signature` header: for each secret, `v1,` and the base64 HMAC-SHA256 of `msg_id.timestamp.body`,
    separated by spaces (Standard Webhooks' form for a secret being rotated: a receiver accepts any that verifies)."""
    at = datetime.fromtimestamp(timestamp_s, tz=UTC)
    return " ".join(webhook.sign(msg_id, at, body) for webhook in webhooks)


def backoff_s(attempts: int, first_s: float, max_s: float) -> float:
    """The wait before the next try after `attempts` failed ones: first_s, doubled each time, at most max_s."""
    return float(min(max_s, first_s * 2 ** max(0, attempts - 1)))


@frozen
class Message:
    """An outbound event: its Standard Webhooks id, its type, whose it is, when, and the JSON body as sent."""

    msg_id: str
    type: str
    user_id: str
    at: float
    body: str


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


def message_of(event: AuditEvent) -> Message | None:
    """The webhook message of an audit event, or None for events webhooks do not carry."""
    who = {"userId": event.user_id, "videoId": event.video_id, "deviceId": event.device_id}
    data: dict[str, Any]
    if event.kind == STREAM_END and event.stream_id is not None:
        kind, msg_id = STREAM_ENDED, f"msg_end_{event.stream_id}"
        data = {**who, "streamId": event.stream_id, "reason": event.reason}
    elif event.kind == DECISION and event.request_id is not None:
        counts = {"active": event.active, "limit": event.limit, "policy": event.policy}
        msg_id = f"msg_{event.request_id}"
        if event.outcome == "allowed":
            kind = STREAM_STARTED
            data = {**who, "streamId": event.stream_id, "requestId": event.request_id, **counts}
        else:
            kind = PLAY_DENIED
            data = {**who, "requestId": event.request_id, "reason": event.reason, **counts}
    else:
        return None
    body = orjson.dumps({"type": kind, "timestamp": _iso(event.at), "data": data}).decode()
    return Message(msg_id, kind, event.user_id, event.at, body)


class Outbox:
    """Adds webhook messages and their deliveries to the audit trail's transaction."""

    def __init__(self, endpoints: Sequence[str], clock: Callable[[], float]) -> None:
        self.endpoints = tuple(endpoints)
        self._clock = clock

    async def write(self, conn: AsyncConnection, events: Iterable[AuditEvent]) -> int:
        """Insert the messages of `events` and a pending delivery per endpoint, on `conn` (the caller's
        transaction); how many messages."""
        messages = [m for m in map(message_of, events) if m is not None]
        if not messages or not self.endpoints:
            return 0
        now = self._clock()
        await conn.execute(
            insert_ignoring_duplicates(conn, _EVENTS),
            [{"msg_id": m.msg_id, "type": m.type, "user_id": m.user_id, "at": m.at, "body": m.body} for m in messages],
        )
        await conn.execute(
            insert_ignoring_duplicates(conn, _DELIVERIES),
            [_new_delivery(m.msg_id, m.user_id, m.at, endpoint, now) for m in messages for endpoint in self.endpoints],
        )
        return len(messages)

    def write_sqlite(self, conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> int:
        """The same as `write`, on the SQLite ledger's connection inside its transaction (embedded: the outbox is
        written in the transaction that records the ledger's logged changes in the audit trail); how many
        messages."""
        messages = [m for m in map(message_of, events) if m is not None]
        if not messages or not self.endpoints:
            return 0
        now = self._clock()
        conn.executemany(_SQLITE_EVENT, [(m.msg_id, m.type, m.user_id, m.at, m.body) for m in messages])
        conn.executemany(
            _SQLITE_DELIVERY,
            [
                _delivery_values(_new_delivery(m.msg_id, m.user_id, m.at, e, now))
                for m in messages
                for e in self.endpoints
            ],
        )
        return len(messages)


# Plain INSERTs skipping duplicates of the unique key, for the SQLite ledger's connection; a delivery's parameters
# in the order of _DELIVERY_COLUMNS.
_SQLITE_EVENT = (
    "INSERT INTO webhook_events (msg_id, type, user_id, at, body) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_SQLITE_DELIVERY = (
    "INSERT INTO webhook_deliveries (msg_id, endpoint, user_id, at, status, created_at, next_at, locked_until, "
    "attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_DELIVERY_COLUMNS = (
    "msg_id",
    "endpoint",
    "user_id",
    "at",
    "status",
    "created_at",
    "next_at",
    "locked_until",
    "attempts",
)


def _delivery_values(delivery: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(delivery[column] for column in _DELIVERY_COLUMNS)


def _new_delivery(msg_id: str, user_id: str, at: float, endpoint: str, now: float) -> dict[str, Any]:
    return {
        "msg_id": msg_id,
        "endpoint": endpoint,
        "user_id": user_id,
        "at": at,
        "status": PENDING,
        "created_at": now,
        "next_at": now,
        "locked_until": 0.0,
        "attempts": 0,
    }


@frozen
class Attempt:
    """A delivery taken for one try, and what the try gave."""

    id: int
    msg_id: str
    endpoint: str
    attempts: int
    first_attempt_at: float | None
    body: str
    status_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the endpoint took it (any 2xx)."""
        return self.status_code is not None and 200 <= self.status_code < 300


@frozen
class DeliveryLogEntry:
    """A row of the delivery log."""

    msg_id: str
    type: str
    user_id: str
    endpoint: str
    status: str
    attempts: int
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    delivered_at: float | None


_LOG_FIELDS = tuple(DeliveryLogEntry.__dataclass_fields__)


class Dispatcher:
    """Sends the outbox's pending deliveries, oldest first per endpoint and user, with retries and backoff."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        endpoints: Sequence[str],
        secrets: Sequence[str],
        clock: Callable[[], float],
        first_backoff_s: float,
        max_backoff_s: float,
        give_up_s: float,
        timeout_s: float,
        poll_s: float,
        settle_s: float,
        retention_s: float,
        batch_size: int = 100,
        prune_interval_s: float = 3600.0,
        horizon: Horizon | None = None,
    ) -> None:
        self._engine = engine
        self._horizon = horizon
        self.endpoints = tuple(endpoints)
        self._webhooks = signers(secrets)
        self._clock = clock
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.give_up_s = give_up_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.retention_s = retention_s
        self.prune_interval_s = prune_interval_s
        self.batch_size = batch_size
        # No redirects: a delivery goes to the URL the operator configured, nowhere else.
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`: a step at once while there is work, else every poll_s; prune every
        prune_interval_s."""
        next_prune_at = self._clock()
        while not stop.is_set():
            sent = 0
            try:
                sent = await self.step()
                if self._clock() >= next_prune_at:
                    next_prune_at = self._clock() + self.prune_interval_s
                    if pruned := await self.prune():
                        log.info("pruned %d webhook events older than the retention", pruned)
            except PlayGateError as exc:
                log.warning("webhook deliveries paused: %s", exc.detail)
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)

    async def prune(self) -> int:
        """Delete the events older than retention_s that no delivery waits for any more, and their delivery log;
        how many events."""
        cutoff = self._clock() - self.retention_s
        waiting = select(_D.msg_id).where(_D.status == PENDING)
        old = select(_E.msg_id).where(_E.at < cutoff, _E.msg_id.not_in(waiting))
        async with translate_db_errors(), self._engine.begin() as conn:
            await conn.execute(delete(_D).where(_D.msg_id.in_(old)))
            result = await conn.execute(delete(_E).where(_E.at < cutoff, _E.msg_id.not_in(waiting)))
        return int(result.rowcount or 0)

    async def step(self) -> int:
        """Take the deliveries due now (each user's oldest pending one per endpoint), send them at once, and
        record each try; how many were tried."""
        now = self._clock()
        settled = now - self.settle_s
        if self._horizon is not None and (oldest := await self._horizon()) is not None:
            settled = min(settled, oldest - self.settle_s)
        taken = await self._take(now, settled)
        if not taken:
            return 0
        tried = await asyncio.gather(*(self._send(a) for a in taken))
        await self._record(tried)
        return len(tried)

    async def _take(self, now: float, settled: float) -> list[Attempt]:
        # Each (endpoint, user)'s pending delivery of least (at, id): its head, the only one it may send.
        rank = func.row_number().over(partition_by=(_D.endpoint, _D.user_id), order_by=(_D.at, _D.id))
        pending = select(_D.id, rank.label("rank")).where(_D.status == PENDING, _D.endpoint.in_(self.endpoints))
        heads = pending.subquery()
        due = (
            select(_D.id, _D.msg_id, _D.endpoint, _D.attempts, _D.first_attempt_at, _E.body)
            .join(heads, and_(_D.id == heads.c.id, heads.c.rank == 1))
            .join(_E, _E.msg_id == _D.msg_id)
            # Settled: events of one user are written by several processes, each within about 0.5 s of the
            # change; an event is sent once every earlier one had the time to be written.
            .where(_D.at <= settled, _D.next_at <= now, _D.locked_until <= now)
            .order_by(_D.at, _D.id)
            .limit(self.batch_size)
        )
        async with translate_db_errors(), self._engine.connect() as conn:
            rows = (await conn.execute(due)).all()
        if not rows:
            return []
        # Taken with one conditional write of their own (a write first: no stale SQLite snapshot), so that two
        # dispatchers (two worker processes) never send the same delivery at once.
        lock = (
            update(_D)
            .where(_D.id.in_([row.id for row in rows]), _D.status == PENDING, _D.locked_until <= now)
            .values(locked_until=now + self.timeout_s + 5)
            .returning(_D.id)
        )
        async with translate_db_errors(), self._engine.begin() as conn:
            locked = set((await conn.execute(lock)).scalars())
        return [
            Attempt(row.id, row.msg_id, row.endpoint, row.attempts, row.first_attempt_at, row.body)
            for row in rows
            if row.id in locked
        ]

    async def _send(self, attempt: Attempt) -> Attempt:
        timestamp_s = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": attempt.msg_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(self._webhooks, attempt.msg_id, timestamp_s, attempt.body),
        }
        try:
            response = await self._http.post(attempt.endpoint, content=attempt.body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            return _with(attempt, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        return _with(attempt, response.status_code, error)

    async def _record(self, tried: Sequence[Attempt]) -> None:
        now = self._clock()
        delivered: dict[int, list[int]] = {}  # by HTTP status: the usual case is one statement for them all
        for attempt in tried:
            if attempt.ok and attempt.status_code is not None:
                delivered.setdefault(attempt.status_code, []).append(attempt.id)
        async with translate_db_errors(), self._engine.begin() as conn:
            for status_code, ids in delivered.items():
                await conn.execute(
                    update(_D)
                    .where(_D.id.in_(ids))
                    .values(
                        status=DELIVERED,
                        delivered_at=now,
                        attempts=_D.attempts + 1,
                        first_attempt_at=func.coalesce(_D.first_attempt_at, now),
                        last_attempt_at=now,
                        last_status=status_code,
                        last_error=None,
                        locked_until=0.0,
                    )
                )
            for attempt in tried:
                if attempt.ok:
                    continue
                await conn.execute(update(_D).where(_D.id == attempt.id).values(**self._outcome(attempt, now)))
                log.info(
                    "webhook %s to %s failed (try %d): %s",
                    attempt.msg_id,
                    attempt.endpoint,
                    attempt.attempts + 1,
                    attempt.error,
                )

    def _outcome(self, attempt: Attempt, now: float) -> dict[str, Any]:
        """A failed try's row: retried after the backoff, or given up give_up_s after the first try."""
        attempts = attempt.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_attempt_at": now,
            "last_status": attempt.status_code,
            "last_error": attempt.error,
            "locked_until": 0.0,
            "first_attempt_at": now if attempt.first_attempt_at is None else attempt.first_attempt_at,
        }
        if now - values["first_attempt_at"] >= self.give_up_s:
            log.error("webhook %s to %s given up after %d tries", attempt.msg_id, attempt.endpoint, attempts)
            return {**values, "status": FAILED}
        return {**values, "next_at": now + backoff_s(attempts, self.first_backoff_s, self.max_backoff_s)}


def _with(attempt: Attempt, status_code: int | None, error: str | None) -> Attempt:
    return dataclasses.replace(attempt, status_code=status_code, error=error)


async def replay(
    engine: AsyncEngine,
    endpoints: Sequence[str],
    clock: Callable[[], float],
    *,
    since: float | None = None,
    msg_id: str | None = None,
) -> int:
    """Send again, to every configured endpoint, the outbox's events since `since` (epoch seconds) or the one
    `msg_id`: their deliveries become pending and due now (and are created for an endpoint that has none); how
    many deliveries."""
    if (since is None) == (msg_id is None):
        raise ValueError("give since or msg_id")
    chosen = _E.at >= since if since is not None else _E.msg_id == msg_id
    now = clock()
    async with translate_db_errors(), engine.begin() as conn:
        reset = await conn.execute(
            update(_D)
            .where(_D.endpoint.in_(endpoints), _D.msg_id.in_(select(_E.msg_id).where(chosen)))
            .values(status=PENDING, next_at=now, locked_until=0.0, attempts=0, first_attempt_at=None)
        )
        missing = (await conn.execute(select(_E.msg_id, _E.user_id, _E.at).where(chosen).order_by(_E.id))).all()
        rows = [_new_delivery(m.msg_id, m.user_id, m.at, endpoint, now) for m in missing for endpoint in endpoints]
        created = 0
        if rows:
            result = await conn.execute(insert_ignoring_duplicates(conn, _DELIVERIES), rows)
            created = max(0, int(result.rowcount or 0))
    return int(reset.rowcount or 0) + created


async def delivery_log(
    engine: AsyncEngine, *, status: str | None = None, msg_id: str | None = None, limit: int = 100
) -> list[DeliveryLogEntry]:
    """The latest deliveries (newest first), of one status or one message if asked."""
    query = select(_D, _E.type).join(_E, _E.msg_id == _D.msg_id)
    if status is not None:
        query = query.where(_D.status == status)
    if msg_id is not None:
        query = query.where(_D.msg_id == msg_id)
    query = query.order_by(_D.id.desc()).limit(limit)
    async with translate_db_errors(), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [DeliveryLogEntry(**{name: getattr(r, name) for name in _LOG_FIELDS}) for r in rows]


def outbox(settings: Settings, clock: Callable[[], float]) -> Outbox | None:
    """The outbox the audit trail writes beside it, when webhook endpoints are configured."""
    endpoints = settings.webhook_url_list
    return Outbox(endpoints, clock) if endpoints else None


def dispatcher(
    settings: Settings,
    engine: AsyncEngine,
    clock: Callable[[], float],
    horizon: Horizon | None = None,
) -> Dispatcher | None:
    """The dispatcher of the configured endpoints (None without any); `horizon`: Dispatcher's."""
    endpoints = settings.webhook_url_list
    if not endpoints or settings.webhook_secret is None:
        return None
    return Dispatcher(
        engine,
        endpoints=endpoints,
        secrets=settings.webhook_secret_list,
        clock=clock,
        first_backoff_s=settings.webhook_backoff_s,
        max_backoff_s=settings.webhook_backoff_max_s,
        give_up_s=settings.webhook_give_up_s,
        timeout_s=settings.webhook_timeout_s,
        poll_s=settings.webhook_poll_s,
        settle_s=settings.webhook_settle_s,
        retention_s=settings.audit_retention_days * 86_400,  # kept as long as the audit trail
        horizon=horizon,
    )


async def start(
    settings: Settings,
    engine: AsyncEngine,
    clock: Callable[[], float],
    stack: AsyncExitStack,
    horizon: Horizon | None = None,
) -> None:
    """Start the dispatcher as a background task held by `stack` (stopped, then its client closed, at exit)."""
    sender = dispatcher(settings, engine, clock, horizon)
    if sender is None:
        return
    stack.push_async_callback(sender.close)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop), name="playgate-webhooks")

    async def stop_task() -> None:
        stop.set()
        await task

    stack.push_async_callback(stop_task)
    log.info("webhook deliveries to %d endpoint(s)", len(sender.endpoints))
