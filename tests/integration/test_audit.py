"""The audit trail: after a burst of plays every decision is on record once, with the streams' ends; pages by
cursor, time ranges, the NDJSON export, who may read it; old events pruned."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from playgate.audit import AuditTrail, Retention, decision_event, end_event
from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.models import ShadowDenialRow
from playgate.catalog.service import Catalog, ShadowDenial
from playgate.domain import MAX_ID_LEN, Decision, Policy, Status, Stream, owned_id
from tests.integration.test_policies import account, new_plan, play
from tests.support.clients import admin_client, api_client, new_user
from tests.support.pg_database import migrated_database

PLAYS = 30
WRITTEN_DEADLINE_S = 15.0


async def _all_events(client: httpx.AsyncClient, user_id: str, page_size: int) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, object] = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"/v1/users/{user_id}/events", params=params)).json()
        events += page["events"]
        cursor = page["nextCursor"]
        if cursor is None:
            return events
    raise AssertionError("the pages never ended")


async def test_every_decision_and_stream_end_is_on_record_once(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin, limit=3)
    async with api_client(base_url, user.token) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1"}) for _ in range(PLAYS))
        )
        decided = {a.json()["requestId"]: a.json()["status"] for a in answers}
        assert (await client.delete("/v1/streams")).status_code == 204
        allowed = sum(status == "allowed" for status in decided.values())
        deadline = time.monotonic() + WRITTEN_DEADLINE_S
        while True:  # written in batches, off the hot path
            events = await _all_events(client, user.id, page_size=7)
            if len(events) >= PLAYS + allowed or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        decisions = [e for e in events if e["kind"] == "decision"]
        assert sorted(str(e["requestId"]) for e in decisions) == sorted(decided)
        assert all(e["outcome"] == decided[str(e["requestId"])] for e in decisions)
        assert all(e["policy"] == "deny" and e["userId"] == user.id for e in decisions)
        ends = [e for e in events if e["kind"] == "stream_end"]
        assert len(ends) == allowed
        assert all(e["reason"] == "stopped" for e in ends)
        assert [int(str(e["id"])) for e in events] == sorted(int(str(e["id"])) for e in events)

        export = await client.get(f"/v1/users/{user.id}/events", params={"format": "ndjson"})
        assert export.headers["content-type"].startswith("application/x-ndjson")
        assert [json.loads(line)["id"] for line in export.text.splitlines()] == [e["id"] for e in events]
        later = await client.get(f"/v1/users/{user.id}/events", params={"since": "2999-01-01T00:00:00Z"})
        assert later.json() == {"events": [], "nextCursor": None}
        earlier = await client.get(f"/v1/users/{user.id}/events", params={"until": "2000-01-01T00:00:00Z"})
        assert earlier.json()["events"] == []
        assert (await client.get(f"/v1/users/{user.id}/events", params={"cursor": "x"})).status_code == 422
    assert len((await admin.get(f"/v1/users/{user.id}/events", params={"limit": 1000})).json()["events"]) == len(events)
    other = await new_user(base_url, admin)
    async with api_client(base_url, other.token) as client:
        assert (await client.get(f"/v1/users/{user.id}/events")).status_code == 403


async def test_events_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    now = [1_000_000.0]
    trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=lambda: now[0])
    try:
        old, recent = (Stream(sid, "u1", "v1", "d1", started_at=0, expires_at=0) for sid in ("s1", "s2"))
        trail.record([end_event(old, "expired", now[0] - 7200), end_event(recent, "stopped", now[0] - 60)])
        assert await trail.flush() == 2
        assert await trail.prune() == 1
        kept = await trail.events("u1", since=None, until=None, after_id=0, limit=10)
        assert [e.event.outcome for e in kept] == ["stopped"]
    finally:
        await engine.dispose()


async def test_why_a_stream_ended_is_found_buffered_and_once_written(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=time.time)
    try:
        evicted = Stream("s1", "u1", "v1", "d1", started_at=0, expires_at=0)
        trail.record([end_event(evicted, "evicted", time.time())])
        assert await trail.end_reason("u1", "s1") == "evicted"  # still in the buffer
        assert await trail.flush() == 1
        assert await trail.end_reason("u1", "s1") == "evicted"  # from the database
        assert await trail.end_reason("u2", "s1") is None, "another user's stream is not told"
        assert await trail.end_reason("u1", "s2") is None
    finally:
        await engine.dispose()


async def test_why_a_stream_ended_is_found_while_its_batch_is_being_written(tmp_path: Path) -> None:
    """Between leaving the buffer and its commit an event is in neither place a reader looks, unless the trail
    keeps the batch in flight in view: a player refused at that moment would be told no reason."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    writing, release = asyncio.Event(), asyncio.Event()

    class HeldWrite:  # a companion (the webhook outbox's place) that holds the batch's transaction open
        async def write(self, conn: object, batch: object) -> None:
            writing.set()
            await asyncio.wait_for(release.wait(), 10)

    trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=time.time, companion=HeldWrite())
    try:
        trail.record([end_event(Stream("s1", "u1", "v1", "d1", started_at=0, expires_at=0), "stopped", time.time())])
        flushing = asyncio.create_task(trail.flush())
        await asyncio.wait_for(writing.wait(), 10)
        assert await trail.end_reason("u1", "s1") == "stopped"
        release.set()
        assert await flushing == 1
        assert await trail.end_reason("u1", "s1") == "stopped"
    finally:
        await engine.dispose()


async def test_shadow_denials_older_than_their_retention_are_pruned_with_the_audit_trail(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shadow.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    now = [1_000_000.0]
    catalog = Catalog(engine, default_limit=2, cache_ttl_s=0.0, clock=lambda: now[0])
    retention = Retention("shadow denials", ShadowDenialRow.decided_at, 600)
    trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=lambda: now[0], also_prune=[retention])
    try:
        old, recent = (
            Decision(f"r{i}", "u1", "v1", "d1", Status.allowed, 1, 2, at, shadow_reason="limit_reached")
            for i, at in enumerate((now[0] - 700, now[0] - 60))
        )
        assert await catalog.record_shadow_denials([old, recent]) == 2
        assert await trail.prune() == 0  # no audit event: the shadow denials are pruned beside, not counted
        assert [d.request_id for d in await catalog.shadow_denials("u1")] == ["r1"]
        now[0] += 600
        await trail.prune()
        assert await catalog.shadow_denials("u1") == []
    finally:
        await catalog.close()
        await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session", params=["sqlite", "postgresql"])
async def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated catalogue: a SQLite file, or a fresh PostgreSQL database (skipped when there is no server)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}"
        await upgrade(url)
        yield url
        return
    async with migrated_database() as url:
        yield url


async def test_shadow_denials_are_listed_field_for_field_on_each_database(catalog_url: str) -> None:
    engine = create_engine(catalog_url)
    catalog = Catalog(engine, default_limit=2, cache_ttl_s=0.0, clock=time.time)
    try:
        decisions = [
            Decision("r1", "u1", "v1", "phone", Status.allowed, 2, 2, 1_000.25, shadow_reason="kind_limit:uhd"),
            Decision("r2", "u1", "v2", "tv", Status.denied, 2, 2, 1_001.5, shadow_reason="device_limit"),
            Decision("r3", "u1", "v3", "tv", Status.allowed, 1, 2, 1_002.0),  # the shadow allowed it: not listed
        ]
        assert await catalog.record_shadow_denials(decisions) == 2
        assert await catalog.shadow_denials("u1") == [
            ShadowDenial("u1", "r2", "v2", "tv", "device_limit", "denied", 1_001.5),
            ShadowDenial("u1", "r1", "v1", "phone", "kind_limit:uhd", "allowed", 1_000.25),
        ]
    finally:
        await catalog.close()
        await engine.dispose()


async def test_the_longest_ids_are_recorded_on_each_database(catalog_url: str) -> None:
    """A user id of the most characters makes request and stream ids of 153 (owned ids): the audit trail and the
    shadow denials keep them. PostgreSQL refused any over 64 before migration 0012, and the distributed drainer
    stopped recording at the first such row (a user id over 19 characters)."""
    engine = create_engine(catalog_url)
    trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=time.time)
    catalog = Catalog(engine, default_limit=2, cache_ttl_s=0.0, clock=time.time)
    user = "u" * MAX_ID_LEN
    request_id, stream_id = owned_id(user), owned_id(user)
    assert len(request_id) == len(stream_id) == 2 * MAX_ID_LEN + 25
    now = time.time()
    decision = Decision(
        request_id, user, "v1", "tv", Status.allowed, 1, 1, now, stream_id=stream_id, shadow_reason="device_limit"
    )
    stream = Stream(stream_id, user, "v1", "tv", started_at=now, expires_at=now + 90)
    try:
        trail.record([decision_event(decision, Policy.deny), end_event(stream, "stopped", now + 1)])
        assert await trail.flush() == 2
        stored = await trail.events(user, since=None, until=None, after_id=0, limit=10)
        assert [(s.event.kind, s.event.request_id, s.event.stream_id) for s in stored] == [
            ("decision", request_id, stream_id),
            ("stream_end", None, stream_id),
        ]
        assert await trail.end_reason(user, stream_id) == "stopped"
        assert await catalog.record_shadow_denials([decision]) == 1
        assert [d.request_id for d in await catalog.shadow_denials(user)] == [request_id]
    finally:
        await catalog.close()
        await engine.dispose()


async def the_plans_policy_is_on_record(admin_url: str, player_url: str) -> None:
    """A plan's own onLimit (evict_oldest, where PLAYGATE_POLICY is deny) is the policy its decisions are recorded
    under (on the distributed deployment as well: tests/distributed/test_audit.py)."""
    admin = await admin_client(admin_url)
    async with admin:
        plan = await new_plan(admin, maxStreams=1, onLimit="evict_oldest")
        user_id, token = await account(admin_url, admin, plan["id"])
        async with api_client(player_url, token) as player:
            answers = [await play(player, video, f"d{video}") for video in ("1", "2")]
        assert [a["status"] for a in answers] == ["allowed", "allowed"]
        deadline = time.monotonic() + WRITTEN_DEADLINE_S
        while True:
            events = (await admin.get(f"/v1/users/{user_id}/events")).json()["events"]
            if len(events) >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert [(e["kind"], e["outcome"], e["policy"]) for e in events] == [
        ("decision", "allowed", "evict_oldest"),
        ("decision", "allowed", "evict_oldest"),
        ("stream_end", "evicted", None),
    ]


async def test_a_plans_own_policy_is_on_record(base_url: str) -> None:
    await the_plans_policy_is_on_record(base_url, base_url)
