"""The Redis ledger's change log, on one server and on a Redis Cluster: every script that decides or ends streams
logs its change in the same call, each change once, and the audit trail drains it into PostgreSQL (audit events and
webhook outbox) idempotently: an entry delivered again after a reader died is recorded once."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from playgate.admission import denied
from playgate.audit import AuditTrail
from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.models import AuditEventRow, WebhookDeliveryRow, WebhookEventRow
from playgate.connections import connect, layout_for
from playgate.domain import LoggedChange, Policy, Reason
from playgate.errors import Unavailable
from playgate.ledger.redis import RedisLedger
from playgate.webhooks import Outbox
from tests.contract.conftest import DECISION_TTL_S, LEASE_S
from tests.contract.test_ledger import one, play
from tests.support.clock import Clock
from tests.support.pg_database import migrated_database
from tests.support.receiver import Receiver, dispatcher_to
from tests.support.servers import free_port

SECRET = "whsec_" + base64.b64encode(b"playgate-webhook-test-key-32-byt").decode()
LONG_IDLE_S = 3600.0  # nothing is taken over
SHORT_IDLE_S = 0.01  # everything unacknowledged is taken over (the tests wait longer than this)


def summary(changes: Sequence[LoggedChange]) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """Each change as (request id, status, ((ended stream id, reason), ...)), "" for no decision, sorted (a cluster's
    logs are many)."""
    return sorted(
        (
            c.decision.request_id if c.decision else "",
            c.decision.status.value if c.decision else "",
            tuple((e.stream.id, e.reason.value) for e in c.ended),
        )
        for c in changes
    )


async def log_lengths(url: str) -> int:
    """Entries left in every change log."""
    client = connect(url)
    try:
        return sum([await client.xlen(key) for key in layout_for(url).event_keys() if await client.exists(key)])
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def ledger(redis_url: str, clock: Clock) -> AsyncIterator[RedisLedger]:
    made = RedisLedger(redis_url, lease_s=LEASE_S, decision_ttl_s=DECISION_TTL_S, clock=clock)
    yield made
    await made.close()


async def test_each_change_is_logged_once_with_its_reasons(ledger: RedisLedger, redis_url: str, clock: Clock) -> None:
    first = await one(ledger, play("a1", user="u1", video="v1", device="tv"), limit=2)
    second = await one(ledger, play("a2", user="u1", video="v2", device="phone"), limit=2)
    third = await one(ledger, play("a3", user="u1", video="v3", device="web"), limit=2)
    assert (await one(ledger, play("a1", user="u1", video="v1", device="tv"), limit=2)) == first  # logs nothing
    kept = await one(ledger, play("e1", user="u4", device="tv"), limit=1, policy=Policy.evict_oldest)
    evicting = await one(ledger, play("e2", user="u4", device="web"), limit=1, policy=Policy.evict_oldest)
    assert [s.id for s in await ledger.stop([second.stream_id or ""], "u1", reason=Reason.stopped)]
    assert [s.id for s in await ledger.stop([first.stream_id or ""], "u1")]  # no reason: not logged
    expiring = await one(ledger, play("b1", user="u2"))
    clock.advance(LEASE_S)
    assert sorted(e.stream.id for e in await ledger.sweep()) == sorted([expiring.stream_id, evicting.stream_id])
    dead = denied(play("d1", user="u3"), Reason.error, 0, 0, clock())
    await ledger.keep([dead])
    await ledger.keep([dead])  # a redelivered dead letter: kept once, logged once

    changes = await ledger.read_changes("reader-1", 100, LONG_IDLE_S)
    assert summary(changes) == sorted(
        [
            (first.request_id, "allowed", ()),
            (second.request_id, "allowed", ()),
            (third.request_id, "denied", ()),
            (kept.request_id, "allowed", ()),
            (evicting.request_id, "allowed", ((kept.stream_id, "evicted"),)),
            ("", "", ((second.stream_id, "stopped"),)),
            (expiring.request_id, "allowed", ()),
            ("", "", ((expiring.stream_id, "expired"),)),
            ("", "", ((evicting.stream_id, "expired"),)),
            (dead.request_id, "denied", ()),
        ]
    )
    assert [c.decision for c in changes if c.decision and c.decision.request_id == third.request_id] == [third]

    # Read, not acknowledged: another reader gets none of them until they were idle claim_idle_s, then all.
    assert await ledger.read_changes("reader-2", 100, LONG_IDLE_S) == []
    await asyncio.sleep(SHORT_IDLE_S * 5)
    again = await ledger.read_changes("reader-2", 100, SHORT_IDLE_S)
    assert summary(again) == summary(changes)
    await ledger.ack_changes(again)
    await asyncio.sleep(SHORT_IDLE_S * 5)
    assert await ledger.read_changes("reader-3", 100, SHORT_IDLE_S) == []
    assert await log_lengths(redis_url) == 0


async def test_a_log_past_its_bound_loses_its_oldest_entries_read_or_not(ledger: RedisLedger, redis_url: str) -> None:
    """While PostgreSQL does not answer the logs grow; the audit trail bounds them (PLAYGATE_AUDIT_BACKLOG)."""
    for n in range(12):  # one user's decisions (one allowed, the others denied): one log, on a cluster too
        await one(ledger, play(f"t{n}", user="trim", device=f"d{n}"), limit=1)
    assert await ledger.read_changes("reader-1", 5, LONG_IDLE_S)  # read, not acknowledged (5 per primary)
    keep = 3
    removed = await ledger.trim_changes(keep)
    client = connect(redis_url)
    try:
        lengths = [await client.xlen(key) for key in layout_for(redis_url).event_keys()]
    finally:
        await client.aclose()
    assert removed > 0
    assert all(length <= keep for length in lengths), lengths
    assert removed + sum(lengths) == 12
    # The removed entries are gone for every reader, the pending ones too; the rest are delivered once, as before.
    await asyncio.sleep(SHORT_IDLE_S * 5)
    rest = await ledger.read_changes("reader-2", 100, SHORT_IDLE_S)
    assert len(rest) == sum(lengths)
    await ledger.ack_changes(rest)
    assert await ledger.read_changes("reader-3", 100, SHORT_IDLE_S) == []
    assert await ledger.trim_changes(keep) == 0


async def test_the_audit_trail_bounds_the_logs_while_the_database_does_not_answer(
    ledger: RedisLedger, redis_url: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(12):
        await one(ledger, play(f"w{n}", user="waiting", device=f"d{n}"), limit=1)
    engine = create_engine(f"postgresql+asyncpg://playgate@127.0.0.1:{free_port()}/nothing")  # nothing listens
    trail = AuditTrail(
        engine,
        policy=Policy.deny,
        retention_s=86_400,
        clock=clock,
        in_ledger=True,
        max_backlog=3,
        flush_interval_s=0.01,
    )
    trail.drain_from(ledger, "drainer", LONG_IDLE_S)
    stop = asyncio.Event()
    task = asyncio.create_task(trail.run(stop))
    try:
        for _ in range(200):  # bounded: 10 s
            if "dropped 9 events" in caplog.text:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
    assert "audit trail dropped 9 events" in caplog.text
    assert await log_lengths(redis_url) == 3


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, migrated (skipped with the reason when PostgreSQL does not answer)."""
    async with migrated_database() as url:
        yield url


class DiesBeforeAck:
    """The ledger's change log read by a drainer that dies after writing a batch, before acknowledging it."""

    def __init__(self, ledger: RedisLedger) -> None:
        self._ledger = ledger

    async def read_changes(self, consumer: str, count: int, claim_idle_s: float) -> list[LoggedChange]:
        return await self._ledger.read_changes(consumer, count, claim_idle_s)

    async def ack_changes(self, changes: Sequence[LoggedChange]) -> None:
        raise Unavailable("killed before acknowledging")

    async def trim_changes(self, keep: int) -> int:
        return await self._ledger.trim_changes(keep)

    async def unrecorded_since(self) -> float | None:
        return await self._ledger.unrecorded_since()


async def _counts(engine: AsyncEngine, user_id: str) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Rows per event id (audit), per msg id (outbox), per msg id (deliveries) of the user."""
    async with engine.connect() as conn:
        found = []
        for column, user_column in (
            (AuditEventRow.event_id, AuditEventRow.user_id),
            (WebhookEventRow.msg_id, WebhookEventRow.user_id),
            (WebhookDeliveryRow.msg_id, WebhookDeliveryRow.user_id),
        ):
            query = select(column, func.count()).where(user_column == user_id).group_by(column)
            found.append({str(key): int(n) for key, n in (await conn.execute(query)).all()})
    return found[0], found[1], found[2]


async def test_a_drain_delivered_again_records_each_event_once(
    ledger: RedisLedger, redis_url: str, pg_url: str, clock: Clock
) -> None:
    user = f"u-{free_port()}"  # the module's database is shared by both Redis deployments
    allowed = await one(ledger, play("p1", user=user, device="tv"), limit=1)
    refused = await one(ledger, play("p2", user=user, device="web"), limit=1)
    await ledger.stop(None, user, reason=Reason.stopped_by_admin)
    engine = create_engine(pg_url)
    outbox = Outbox([f"http://127.0.0.1:{free_port()}/hooks"], clock)
    trails = [
        AuditTrail(engine, policy=Policy.deny, retention_s=86_400, clock=clock, companion=outbox, in_ledger=True)
        for _ in range(2)
    ]
    try:
        trails[0].drain_from(DiesBeforeAck(ledger), "dying", SHORT_IDLE_S)
        with pytest.raises(Unavailable):
            await trails[0].drain()
        written = await _counts(engine, user)
        await asyncio.sleep(SHORT_IDLE_S * 5)
        trails[1].drain_from(ledger, "next", SHORT_IDLE_S)
        assert await trails[1].drain() == 3
        assert await trails[1].drain() == 0
        recorded = await _counts(engine, user)
    finally:
        await engine.dispose()
    decisions = {f"decision:{allowed.request_id}": 1, f"decision:{refused.request_id}": 1}
    events = {**decisions, f"stream_end:{allowed.stream_id}": 1}
    messages = {f"msg_{allowed.request_id}": 1, f"msg_{refused.request_id}": 1, f"msg_end_{allowed.stream_id}": 1}
    assert written == recorded == (events, messages, messages)
    assert await log_lengths(redis_url) == 0


async def test_webhooks_wait_for_the_changes_a_killed_reader_left_then_go_in_order(
    redis_url: str, tmp_path: Path
) -> None:
    """A reader killed with changes read and not recorded leaves them to be taken over after claim_idle_s; a user's
    later change, recorded meanwhile by another reader, is not sent before them (the dispatcher's horizon)."""
    ledger = RedisLedger(redis_url, lease_s=LEASE_S, decision_ttl_s=DECISION_TTL_S, clock=time.time)
    url = f"sqlite+aiosqlite:///{tmp_path / 'hooks.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    receiver = Receiver(SECRET)
    await receiver.start()
    outbox = Outbox([receiver.url], time.time)
    trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=time.time, companion=outbox, in_ledger=True)
    dispatcher = dispatcher_to(receiver, engine, time.time, horizon=ledger.unrecorded_since)
    user = f"k-{free_port()}"
    try:
        assert await ledger.unrecorded_since() is None
        before = time.time()
        first = await one(ledger, play("k1", user=user, device="tv"), limit=1)
        killed = await ledger.read_changes("killed", 100, LONG_IDLE_S)  # read; its reader dies before recording
        assert [c.decision.request_id for c in killed if c.decision] == [first.request_id]
        since = await ledger.unrecorded_since()
        assert since is not None
        assert before - 1 <= since <= time.time() + 1  # the store's clock, to the ms
        await asyncio.sleep(0.05)
        later = await one(ledger, play("k2", user=user, device="web"), limit=1)
        trail.drain_from(ledger, "live", LONG_IDLE_S)
        assert await trail.drain() == 1  # the later change only: the first is the killed reader's
        assert await ledger.unrecorded_since() == since
        assert await dispatcher.step() == 0  # recorded and due, but an earlier change is still in the log

        await asyncio.sleep(SHORT_IDLE_S * 5)
        trail.drain_from(ledger, "live", SHORT_IDLE_S)  # taken over once idle claim_idle_s
        assert await trail.drain() == 1
        assert await ledger.unrecorded_since() is None
        for _ in range(2):  # the user's oldest first, one at a time
            assert await dispatcher.step() == 1
        assert [r.msg_id for r in receiver.received] == [f"msg_{first.request_id}", f"msg_{later.request_id}"]
        assert receiver.bad == []
    finally:
        await dispatcher.close()
        await receiver.stop()
        await engine.dispose()
        await ledger.close()
